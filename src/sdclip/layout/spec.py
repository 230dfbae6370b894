"""Every layout option by name (`LayoutSpec`) and the constants the layouts share. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sdclip.conventions.choices import CHUNK_STYLES, LAYOUTS
from sdclip.conventions.presets import Options
from sdclip.tokenizer.stream import EOS

LayoutMode = Literal["truncate", "chunk", "window", "compress", "long"]
COMMA_ID = 267  #: ",</w>" in the CLIP vocabulary
LONG_CLIP_LENGTH = 248


class RowLimitError(ValueError):
    """A prompt needs more rows than the caller allows; raised while the rows are built, not after."""


@dataclass(frozen=True)
class LayoutSpec:
    """Every layout option, by name. ``length`` is the row length (77, or 248 for Long-CLIP)."""

    mode: LayoutMode = "chunk"
    length: int = 77
    pad_id: int = EOS
    comma_backtrack: int = 20
    chunk_style: Literal["a1111", "comfy", "compel", "kohya"] = "a1111"
    stride: int = 50
    max_rows: int | None = None
    comma_id: int = COMMA_ID
    row_limit: int | None = None  #: refuse (RowLimitError) as soon as a layout needs more rows than this

    def __post_init__(self) -> None:
        if self.mode not in LAYOUTS:
            raise ValueError(f"unknown layout {self.mode!r}; choose one of {', '.join(LAYOUTS)}")
        if self.chunk_style not in CHUNK_STYLES:
            raise ValueError(f"unknown chunk style {self.chunk_style!r}; choose one of {', '.join(CHUNK_STYLES)}")
        if self.length < 3:
            raise ValueError(f"row length {self.length} leaves no room for tokens")
        if not 1 <= self.stride <= self.length - 2:
            raise ValueError(f"window stride must be in 1..{self.length - 2}, got {self.stride}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"max_rows must be ≥ 1, got {self.max_rows}")
        if self.comma_backtrack < 0:
            raise ValueError("comma_backtrack must be ≥ 0")
        if self.row_limit is not None and self.row_limit < 1:
            raise ValueError(f"row_limit must be ≥ 1, got {self.row_limit}")

    @property
    def capacity(self) -> int:
        """Tokens per row between BOS and EOS."""
        return self.length - 2


def spec_for(options: Options, length: int, pad_id: int, row_limit: int | None = None) -> LayoutSpec:
    """The layout options of one encoder under `options`. With a `row_limit`, compress without `max_rows`
    compresses to fit it (so every prompt fits), and every other layout refuses past it while building rows."""
    max_rows = options.max_rows if options.max_rows is not None or options.layout != "compress" else row_limit
    return LayoutSpec(
        mode=options.layout,  # type: ignore[arg-type]
        length=length,
        pad_id=pad_id,
        comma_backtrack=options.comma_backtrack,
        chunk_style=options.chunk_style,  # type: ignore[arg-type]
        stride=options.stride,
        max_rows=max_rows,
        row_limit=row_limit,
    )
