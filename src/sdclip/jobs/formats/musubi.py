"""`--format musubi`: kohya-ss/musubi-tuner's text-encoder caches, read at commit
30c658c4f4b0bf05038b3346eff9670259b10fc7 (`src/musubi_tuner/dataset/cache_io.py`, `architectures.py`,
`image_video_dataset.py`, `bucket.py`, and each `*_cache_text_encoder_outputs.py`).

One safetensors per image: `{cache_directory}/{basename}_{arch}_te.safetensors` (basename: the image's file
name without folder or suffix; sdclip writes into --out, which the dataset config names as its
`cache_directory`), metadata `architecture` (the full name), `caption1` (the caption), `format_version`
"1.0.1". Keys end with the tensor's dtype name (`dtype_to_str`: `bfloat16`, `float16`, `float32`);
`varlen_` keys hold one caption's states without padding (the loader does not stack them, `bucket.py`):

| family     | arch | architecture | keys                                                   | length          |
|------------|------|--------------|--------------------------------------------------------|-----------------|
| flux       | fk   | flux_kontext | `t5_vec_{dtype}` [512, 4096], `clip_l_pooler_{dtype}` [768] | T5 padded to 512, no mask |
| wan        | wan  | wan          | `varlen_t5_{dtype}` [n, 4096]                          | tokens with `</s>` |
| qwen-image | qi   | qwen_image   | `varlen_vl_embed_{dtype}` [n, 3584]                    | the mask's length |
| z-image    | zi   | z_image      | `varlen_llm_embed_{dtype}` [n, 2560]                   | the mask's length |

Flux here is FLUX.1 Kontext (`flux_kontext_cache_text_encoder_outputs.py`: T5 at 512, attention_mask=None,
CLIP-L `pooler_output`), which uses FLUX.1's text encoders.
"""

from __future__ import annotations

import os

from sdclip.jobs.formats.base import CAPTION, FamilyTable, Format, Key, dtype_to_str, safetensors_bytes

COMMIT = "30c658c4f4b0bf05038b3346eff9670259b10fc7"
FORMAT_VERSION = "1.0.1"


def _table(arch: str, architecture: str, *keys: Key, **flags) -> FamilyTable:  # noqa: ANN003
    return FamilyTable(arch, keys, {"architecture": architecture, "caption1": CAPTION, "format_version": FORMAT_VERSION},
                       **flags)


#: family → arch (the file name's), `architecture` (metadata) and the keys
TABLES = {
    "flux": _table("fk", "flux_kontext", Key("t5_vec_{dtype}", "embeds"), Key("clip_l_pooler_{dtype}", "pooled"),
                   fixed_t5=True, t5_positions=512),
    "wan": _table("wan", "wan", Key("varlen_t5_{dtype}", "varlen")),
    "qwen-image": _table("qi", "qwen_image", Key("varlen_vl_embed_{dtype}", "varlen")),
    "z-image": _table("zi", "z_image", Key("varlen_llm_embed_{dtype}", "varlen")),
}


def cache_name(where: str, caption: str, family: str, table: FamilyTable) -> str:
    """`{basename}_{arch}_te.safetensors` (the image's file name without folder or suffix)."""
    return f"{os.path.splitext(os.path.basename(where))[0]}_{table.tag}_te.safetensors"


MUSUBI = Format("musubi", TABLES, tuple(f"_{t.tag}_te.safetensors" for t in TABLES.values()), "out", cache_name,
                safetensors_bytes, repeats="refuse", trainer="musubi-tuner")

__all__ = ["COMMIT", "MUSUBI", "TABLES", "cache_name", "dtype_to_str"]
