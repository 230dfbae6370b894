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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from sdclip.jobs.formats.base import Format, RowContext, fixed_t5, refuse, safetensors_bytes

COMMIT = "30c658c4f4b0bf05038b3346eff9670259b10fc7"
#: family → (arch short name, architecture full name, key base, varlen)
ARCH = {
    "flux": ("fk", "flux_kontext", "t5_vec", False),
    "wan": ("wan", "wan", "varlen_t5", True),
    "qwen-image": ("qi", "qwen_image", "varlen_vl_embed", True),
    "z-image": ("zi", "z_image", "varlen_llm_embed", True),
}
FORMAT_VERSION = "1.0.1"


def dtype_to_str(dtype: torch.dtype) -> str:
    """musubi-tuner's `utils.model_utils.dtype_to_str`."""
    return str(dtype).split(".")[-1]


def cache_name(rel: str, family: str) -> str:
    return f"{os.path.splitext(os.path.basename(rel))[0]}_{ARCH[family][0]}_te.safetensors"


def _check(family: str, source_format: str, rows: int, options: dict) -> None:
    if family == "flux":
        fixed_t5(options, "musubi")
        if options.get("max_sequence_length") not in (None, 512):
            refuse("--format musubi: musubi-tuner encodes FLUX.1 Kontext's T5 at 512 positions (T5XXL_MAX_LENGTH)")


def _write(ctx: RowContext) -> None:
    arch, full, base, varlen = ARCH[ctx.family]
    seen: dict[str, str] = {}
    t = ctx.tensors
    for i, rel in enumerate(ctx.wheres):
        name = cache_name(rel, ctx.family)
        if name in seen:  # musubi names caches by basename: two images of one name would share a file
            refuse(f"--format musubi: {seen[name]} and {rel} both cache as {name} (musubi-tuner names caches by "
                   "file name only): rename one")
        seen[name] = rel
        e = t["prompt_embeds"][i]
        dt = dtype_to_str(e.dtype)
        if varlen:
            n = int(t["attention_mask"][i].sum()) if "attention_mask" in t else int(t["token_counts"][i][0])
            sd = {f"{base}_{dt}": e[:n].clone()}
        else:
            pooled = t["pooled_prompt_embeds"][i]
            sd = {f"{base}_{dt}": e.clone(), f"clip_l_pooler_{dtype_to_str(pooled.dtype)}": pooled.clone()}
        meta = {"architecture": full, "caption1": ctx.texts[i], "format_version": FORMAT_VERSION}
        ctx.save(ctx.out, name, safetensors_bytes(sd, meta))


MUSUBI = Format("musubi", tuple(ARCH), tuple(f"_{a[0]}_te.safetensors" for a in ARCH.values()), "out", _write, _check)
