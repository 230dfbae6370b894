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

from sdclip.jobs.formats.base import FamilyTable, Format, Key, one_row, torch_bytes

COMMIT = "bc8e6ab7738ce457a2ed8eb2d26cadd91c6442cb"
#: `_slice_batch_output_for_cache`: tensors keep a batch axis of 1, the pooled vector loses it
_CLIP_KEYS = (Key("prompt_embeds", "embeds", batch=True), Key("pooled_prompt_embeds", "pooled"))
#: family (SimpleTuner's model family, the file name's) → the dict's entries
TABLES = {
    "sdxl": FamilyTable("sdxl", _CLIP_KEYS),
    "sd3": FamilyTable("sd3", _CLIP_KEYS, fixed_t5=True),
    "flux": FamilyTable("flux", (*_CLIP_KEYS, Key("time_ids", "text_ids", batch=True),
                                 Key("attention_masks", "mask", role=1, batch=True)), fixed_t5=True),
}


def cache_name(where: str, caption: str, family: str, table: FamilyTable) -> str:
    """SimpleTuner's `create_hash(caption)` + ".pt" (a prompt-keyed cache)."""
    return hashlib.md5(str(caption).encode()).hexdigest() + f"-{table.tag}.pt"


def _check(family: str, source_format: str, rows: int, options: dict) -> None:
    one_row(family, rows, "simpletuner")


SIMPLETUNER = Format("simpletuner", TABLES, tuple(f"-{t.tag}.pt" for t in TABLES.values()), "out", cache_name,
                     torch_bytes, _check, per_image=False, repeats="once", trainer="SimpleTuner")
