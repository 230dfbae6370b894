"""`--format kohya`: the per-image text-encoder caches kohya-ss/sd-scripts reads
(`--cache_text_encoder_outputs_to_disk`), read at sd-scripts commit 48d368fa557731ad0488c07304dfeba8c07910eb.

One `np.savez` (uncompressed) beside each image, one sample, no batch axis; bf16 stored as float32 (numpy
has no bfloat16), other dtypes as encoded. sd-scripts' `is_disk_cached_outputs_expected` checks key names
and the `apply_*_attn_mask` flags only, so the flags must equal the trainer's (default False: the T5 and
CLIP runs see no mask, as diffusers' pipelines and sdclip's Conditioner encode).

- SDXL (`library/strategy_sdxl.py`, `SdxlTextEncoderOutputsCachingStrategy`): `<stem>_te_outputs.npz` =
  `hidden_state1` [77, 768] (ViT-L penultimate, no final LN), `hidden_state2` [77, 1280] (bigG),
  `pool2` [1280] (bigG projected).
- SD3 (`library/strategy_sd3.py`, `Sd3TextEncoderOutputsCachingStrategy`): `<stem>_sd3_te.npz` = `lg_out`
  [77, 2048] (L ‖ G penultimate), `lg_pooled` [2048], `t5_out` [L, 4096] (L = --t5xxl_max_token_length,
  default 256), `clip_l_attn_mask`, `clip_g_attn_mask` [77], `t5_attn_mask` [L] (the tokenizers' int64
  masks), `apply_lg_attn_mask`, `apply_t5_attn_mask` (bool).
- Flux (`library/strategy_flux.py`, `FluxTextEncoderOutputsCachingStrategy`): `<stem>_flux_te.npz` =
  `l_pooled` [768] (CLIP-L pooler_output), `t5_out` [L, 4096] (512 dev / 256 schnell), `txt_ids` zeros
  [L, 3] float32, `t5_attn_mask` [L] int64, `apply_t5_attn_mask` (bool).

sd-scripts caches text-encoder outputs for SDXL, SD3 and Flux only (`strategy_sd.py` has none for SD1/SD2),
with 77 CLIP slots (its long-caption layout is K·75 + 2, not sdclip's 77·K): `--max-rows 1`.
"""

from __future__ import annotations

from sdclip.jobs.formats.base import FamilyTable, Format, Key, npz_bytes, refuse, stem

COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
#: family → `<stem>{tag}` and the npz's arrays, in sd-scripts' order
TABLES = {
    "sdxl": FamilyTable("_te_outputs.npz", (
        Key("hidden_state1", "features", role=0),
        Key("hidden_state2", "features", role=1),
        Key("pool2", "pooled"),
    )),
    "sd3": FamilyTable("_sd3_te.npz", (
        Key("lg_out", "first_block"),
        Key("lg_pooled", "pooled"),
        Key("t5_out", "last_block"),
        Key("clip_l_attn_mask", "mask", role=0),
        Key("clip_g_attn_mask", "mask", role=1),
        Key("t5_attn_mask", "mask", role=2),
        Key("apply_lg_attn_mask", "flag", value=False),
        Key("apply_t5_attn_mask", "flag", value=False),
    ), fixed_t5=True),
    "flux": FamilyTable("_flux_te.npz", (
        Key("l_pooled", "pooled"),
        Key("t5_out", "last_block"),
        Key("txt_ids", "text_ids"),
        Key("t5_attn_mask", "mask", role=1),
        Key("apply_t5_attn_mask", "flag", value=False),
    ), fixed_t5=True),
}


def _check(family: str, source_format: str, rows: int, options: dict) -> None:
    if rows != 1:  # train_util.py `--max_token_length` choices [None, 150, 225]; sd3/flux_train_network ignore it
        refuse(f"--format kohya --max-rows {rows}: sd-scripts' --max_token_length is 75, 150 or 225 (at most 3 rows, "
               "SDXL only: SD3 and Flux always cache 77 CLIP slots) and joins rows as n·75 + 2 slots (152 / 227), "
               "which sdclip's 77·K rows are not: use --max-rows 1, or sdclip's own shards (no --format) for longer "
               "captions")


def _name(where: str, caption: str, family: str, table: FamilyTable) -> str:
    """Beside the image: its path without the suffix, then the family's ending."""
    return stem(where) + table.tag


KOHYA = Format("kohya", TABLES, tuple(t.tag for t in TABLES.values()), "images", _name, npz_bytes, _check)
