"""Import a Python file as a module the way ComfyUI imports a pack (by path, under a throwaway name)."""
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_module(name: str, path: Path, package: bool = False) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(path.parent)] if package else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module
