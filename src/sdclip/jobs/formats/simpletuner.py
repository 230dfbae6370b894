"""`--format simpletuner`: bghira/SimpleTuner's text-embed cache, read at commit
bc8e6ab7738ce457a2ed8eb2d26cadd91c6442cb (`simpletuner/helpers/caching/text_embeds.py`: `create_hash`,
`_slice_batch_output_for_cache`, `load_from_cache`; `helpers/models/{sdxl,sd3,flux}/model.py`:
`_format_text_embedding`; `helpers/data_backend/local.py`: `torch_save` / `torch_load`).

Content-addressed: `{cache_dir}/{md5(caption)}-{model_family}.pt` (the caption's md5 hex, then the model
family, `create_hash`), written with `torch.save` (uncompressed: `compress_cache` off), so a caption that
occurs many times is one file. sdclip writes into --out (the dataset's `cache_dir`). Each file holds one
sample (`_slice_batch_output_for_cache`: tensors keep a batch axis of 1, the pooled vector loses it):

- sdxl, sd3: `prompt_embeds` [1, N, D], `pooled_prompt_embeds` [P];
- flux: `prompt_embeds` [1, 512, 4096], `pooled_prompt_embeds` [768], `time_ids` [1, 512, 3] (the text
  ids, zeros, float32), `attention_masks` [1, 512] (the T5 tokenizer's mask, int64).

sdclip never reads these files back (they are pickles); the tests read them as SimpleTuner does.
"""

from __future__ import annotations

import hashlib
import io

from sdclip.jobs.formats.base import Format, RowContext, fixed_t5, mask, one_row

COMMIT = "bc8e6ab7738ce457a2ed8eb2d26cadd91c6442cb"
FAMILIES = ("sdxl", "sd3", "flux")


def cache_name(caption: str, family: str) -> str:
    """SimpleTuner's `create_hash(caption)` + ".pt" (a prompt-keyed cache)."""
    return hashlib.md5(str(caption).encode()).hexdigest() + f"-{family}.pt"


def _check(family: str, source_format: str, rows: int, options: dict) -> None:
    one_row(family, rows, "simpletuner")
    if family != "sdxl":
        fixed_t5(options, "simpletuner")


def _write(ctx: RowContext) -> None:
    import torch

    t = ctx.tensors
    done = set()
    for i, caption in enumerate(ctx.texts):
        name = cache_name(caption, ctx.family)
        if name in done:
            continue
        done.add(name)
        e = t["prompt_embeds"][i]
        item = {"prompt_embeds": e[None].clone(), "pooled_prompt_embeds": t["pooled_prompt_embeds"][i].clone()}
        if ctx.family == "flux":
            n = e.shape[0]
            item["time_ids"] = torch.zeros(1, n, 3, dtype=torch.float32)
            item["attention_masks"] = mask(int(t["token_counts"][i][1]), n)[None]
        buf = io.BytesIO()
        torch.save(item, buf)
        ctx.save(ctx.out, name, buf.getvalue())


SIMPLETUNER = Format("simpletuner", FAMILIES, tuple(f"-{f}.pt" for f in FAMILIES), "out", _write, _check,
                     per_image=False)
