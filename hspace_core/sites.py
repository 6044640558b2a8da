"""Where the controller sits in a network: the hook site a direction, a trajectory and a fingerprint name.

``"mid_block.output"``: a UNet's middle block (h is ``[C, H, W]`` per image; the default, and what every file
written before sites existed means). ``"<blocks>.<i>.output"``: the image tokens of a transformer block's output;
``"<blocks>.<i>.attn.output"``: the image tokens of that block's attention output (FluxSpace's space). At a
transformer site h is ``[tokens, dim]`` per image, text tokens never part of it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import HSpaceError

MID_BLOCK = "mid_block.output"
KINDS = ("mid_block", "block", "attention")
_TOKEN_SITE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\.(\d+)\.(attn\.)?output$")


@dataclass(frozen=True)
class HookSite:
    """A hook site: ``kind`` ("mid_block", "block" or "attention"), and for a transformer the block list's
    attribute name (``blocks``, e.g. ``"transformer_blocks"``, Flux's ``"single_transformer_blocks"``) and index."""

    kind: str = "mid_block"
    blocks: str = ""
    index: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise HSpaceError(f"a hook site kind in {list(KINDS)} expected, got {self.kind!r}")
        if self.kind != "mid_block" and (not self.blocks or self.index < 0):
            raise HSpaceError(f"a {self.kind} site needs a block list name and an index >= 0, got "
                              f"{self.blocks!r} and {self.index}")

    @classmethod
    def parse(cls, text: "str | HookSite") -> "HookSite":
        """A site from its name (see the module docstring)."""
        if isinstance(text, HookSite):
            return text
        if text == MID_BLOCK:
            return cls()
        match = _TOKEN_SITE.match(str(text))
        if match is None:
            raise HSpaceError(f"a hook site 'mid_block.output', '<blocks>.<i>.output' or '<blocks>.<i>.attn.output' "
                              f"expected, got {text!r}")
        return cls("attention" if match.group(3) else "block", match.group(1), int(match.group(2)))

    @property
    def name(self) -> str:
        if self.kind == "mid_block":
            return MID_BLOCK
        return f"{self.blocks}.{self.index}.{'attn.' if self.kind == 'attention' else ''}output"

    @property
    def rank(self) -> int:
        """The number of axes of one image's h here: 3 ([C, H, W]) at a UNet's middle block, 2 ([tokens, dim])."""
        return 3 if self.kind == "mid_block" else 2

    def __str__(self) -> str:
        return self.name


def site_rank(name: str) -> int:
    return HookSite.parse(name).rank
