"""hspace: a ComfyUI node pack for semantic editing in the h-space (UNet bottleneck) of diffusion models.

ComfyUI imports this folder as a package named after the folder; the node modules in ``nodes/`` import each
other relatively and the library ``hspace_core`` absolutely. ``hspace_core`` is found either because the
package is pip-installed or because this folder is on ``sys.path``: it is appended (never prepended, so
that ComfyUI's own top-level ``nodes`` module keeps winning over this pack's ``nodes/`` folder).
"""
import importlib.util
import os
import sys

_PACK_ROOT = os.path.dirname(os.path.abspath(__file__))
if importlib.util.find_spec("hspace_core") is None and _PACK_ROOT not in sys.path:
    sys.path.append(_PACK_ROOT)

from .nodes import _folders  # noqa: E402
from .nodes.registry import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

_folders.register()
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
