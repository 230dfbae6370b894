"""Stage 3: a TokenStream → fixed-size rows of slots (`Rows`), one module per long-prompt layout."""

from sdclip.layout.build import LAYOUTS, LONG_CLIP_LENGTH, LayoutSpec, layout
from sdclip.layout.rows import Rows

__all__ = ["LAYOUTS", "LONG_CLIP_LENGTH", "LayoutSpec", "Rows", "layout"]
