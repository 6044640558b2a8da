"""Test set-up: the pack imported as a package, and deterministic seeds.

The node modules import ``hspace_core`` package-relatively (``from ..hspace_core import ...``), as ComfyUI
imports the pack folder as a package. The tests import them as ``nodes.<module>`` and the library as
``hspace_core``; :class:`_PackAliases` maps ``nodes...`` to the pack's ``hspace_pack.nodes...`` and the pack's
``hspace_pack.hspace_core...`` to the top-level ``hspace_core...``, so each module exists once (a Direction
made in a test is the class the nodes check for).
"""
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

PACK = "hspace_pack"
ROOT = Path(__file__).resolve().parents[1]


class _PackAliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    ALIASES = {"nodes": f"{PACK}.nodes", f"{PACK}.hspace_core": "hspace_core"}

    def __init__(self):
        self._real_specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, name, path=None, target=None):
        for alias, real in self.ALIASES.items():
            if name == alias or name.startswith(alias + "."):
                return importlib.util.spec_from_loader(name, self, origin=real + name[len(alias):])
        return None

    def create_module(self, spec):
        module = importlib.import_module(spec.origin)
        self._real_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # the import system set the alias spec on the shared module object; give it back its own
        module.__spec__ = self._real_specs.pop(module.__spec__.name)


if PACK not in sys.modules:
    _pack = types.ModuleType(PACK)
    _pack.__path__ = [str(ROOT)]
    _pack.__spec__ = importlib.machinery.ModuleSpec(PACK, None, is_package=True)
    _pack.__spec__.submodule_search_locations = _pack.__path__
    sys.modules[PACK] = _pack
    sys.meta_path.insert(0, _PackAliases())


torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
