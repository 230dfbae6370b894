"""Stage 3: a TokenStream → fixed-size rows of slots (`Rows`), one module per long-prompt layout.

Every layout gives [BOS] + up to L-2 tokens + [EOS] + pad per row. Pad id: EOS (49407) for CLIP ViT-L; 0 for
OpenCLIP models (SD2, SDXL's bigG), where AUTOMATIC1111 rewrites every slot after the first EOS to 0 —
which is exactly [BOS] + tokens + [EOS] + pad(0). The layouts, each documented in its module:
``truncate`` (diffusers), ``chunk`` (75-token rows; a1111 / comfy / compel chunkers), ``window``,
``compress``, ``long`` (Long-CLIP's 248 positions).
"""

from collections.abc import Callable

from sdclip.layout.chunk import chunk
from sdclip.layout.compress import compress
from sdclip.layout.rows import Rows
from sdclip.layout.spec import CHUNK_STYLES, COMMA_ID, LAYOUTS, LONG_CLIP_LENGTH, LayoutSpec, RowLimitError
from sdclip.layout.truncate import long, truncate
from sdclip.layout.window import window
from sdclip.tokenizer.stream import TokenStream

#: layout mode → builder
BUILDERS: dict[str, Callable[[TokenStream, LayoutSpec], Rows]] = {
    "truncate": truncate,
    "chunk": chunk,
    "window": window,
    "compress": compress,
    "long": long,
}


def layout(stream: TokenStream, spec: LayoutSpec = LayoutSpec()) -> Rows:
    """Lay a token stream out in rows as ``spec.mode`` says."""
    return BUILDERS[spec.mode](stream, spec)


__all__ = ["BUILDERS", "CHUNK_STYLES", "COMMA_ID", "LAYOUTS", "LONG_CLIP_LENGTH", "LayoutSpec", "RowLimitError", "Rows", "layout"]
