"""The names each option of `Options` takes, as data: the ground floor imports no stage. Each stage keys
its registry by these names (syntax: parsers, tokenizer: normalisations, layout: layouts and chunkers),
and tests/conventions/test_choices.py checks that every registry holds exactly them."""

DIALECTS: tuple[str, ...] = ("a1111", "comfy", "compel", "plain", "kohya")
#: CLIP text normalisations (sdclip.tokenizer.normalize)
NORMALIZATIONS: tuple[str, ...] = ("openclip", "hf-slow", "hf-fast")
LAYOUTS: tuple[str, ...] = ("truncate", "chunk", "window", "compress", "long")
#: how the chunk layout fills rows (sdclip.layout.chunk.CHUNKERS)
CHUNK_STYLES: tuple[str, ...] = ("a1111", "comfy", "compel", "kohya")
#: ComfyUI_ADV_CLIP_emb's token weight normalisations (sdclip.tokenizer.weight_norm.TOKEN_NORMALIZATIONS)
TOKEN_NORMALIZATIONS: tuple[str, ...] = ("none", "mean", "length", "length+mean")
