"""hspace: a ComfyUI node pack for semantic editing in the h-space (UNet bottleneck) of diffusion models.

ComfyUI imports this folder as a package named after the folder. Everything inside imports package-relatively
(the nodes import the library as ``..hspace_core``), so nothing is added to ``sys.path`` and none of this
folder's names (``nodes``, ``tests``, ...) can shadow ComfyUI's modules or another pack's.
"""
WEB_DIRECTORY = "./web"

if __package__:
    from .nodes import _folders, registry

    _folders.register()
    _COMFYUI = registry.for_comfyui(registry.LOADED)
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = _COMFYUI.classes, _COMFYUI.display_names
else:  # imported as a plain module, not as ComfyUI imports a pack (pytest collecting a checkout whose folder
    # name is not a Python name, e.g. "hspace-main"): there is no package to load the nodes from
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
