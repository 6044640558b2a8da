"""Every node class of the pack, gathered from the family modules."""
from __future__ import annotations

from . import (apply, asyrp_train, capture, directions, discovery, inversion, loaders, local_directions,
               trajectories)

FAMILIES = (loaders, capture, trajectories, inversion, discovery, local_directions, asyrp_train, directions,
            apply)

NODE_CLASS_MAPPINGS = {cls.__name__: cls for family in FAMILIES for cls in family.NODE_CLASSES}
NODE_DISPLAY_NAME_MAPPINGS = {name: title for family in FAMILIES for name, title in family.DISPLAY_NAMES.items()}

