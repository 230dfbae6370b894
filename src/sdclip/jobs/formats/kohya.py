"""`--format kohya`: the per-image text-encoder caches kohya-ss/sd-scripts reads
(`--cache_text_encoder_outputs_to_disk`), read at sd-scripts commit 48d368fa557731ad0488c07304dfeba8c07910eb.

One `np.savez` (uncompressed) beside each image, one sample, no batch axis; bf16 stored as float32 (numpy
has no bfloat16), other dtypes as encoded. sd-scripts' `is_disk_cached_outputs_expected` checks key names
and the `apply_*_attn_mask` flags only, so the flags must equal the trainer's (default False: the T5 and
CLIP runs see no mask, as diffusers' pipelines and sdclip's Conditioner encode).

- SDXL (`library/strategy_sdxl.py`, `SdxlTextEncoderOutputsCachingStrategy`): `<stem>_te_outputs.npz` =
  `hidden_state1` [S, 768] (ViT-L penultimate, no final LN), `hidden_state2` [S, 1280] (bigG),
  `pool2` [1280] (bigG projected), S = 77, or 152 / 227 for `--max_token_length 150 / 225` (below).
- SD3 (`library/strategy_sd3.py`, `Sd3TextEncoderOutputsCachingStrategy`): `<stem>_sd3_te.npz` = `lg_out`
  [77, 2048] (L ‖ G penultimate), `lg_pooled` [2048], `t5_out` [L, 4096] (L = --t5xxl_max_token_length,
  default 256), `clip_l_attn_mask`, `clip_g_attn_mask` [77], `t5_attn_mask` [L] (the tokenizers' int64
  masks), `apply_lg_attn_mask`, `apply_t5_attn_mask` (bool).
- Flux (`library/strategy_flux.py`, `FluxTextEncoderOutputsCachingStrategy`): `<stem>_flux_te.npz` =
  `l_pooled` [768] (CLIP-L pooler_output), `t5_out` [L, 4096] (512 dev / 256 schnell), `txt_ids` zeros
  [L, 3] float32, `t5_attn_mask` [L] int64, `apply_t5_attn_mask` (bool).

sd-scripts caches text-encoder outputs for SDXL, SD3 and Flux only (`strategy_sd.py` has none for SD1/SD2).
SD3 and Flux hold 77 CLIP slots (`strategy_sd3.py:37-38` tokenizes CLIP at 77; `sd3_train_network.py:57` and
`flux_train_network.py:74` warn that `--max_token_length` is unused): `--max-rows 1`.

SDXL `--max_token_length 150 / 225` (`train_util.py:3902`, choices None / 150 / 225) is `--preset kohya
--max-rows 2 / 3` here (`LONG_ROWS`). `SdxlTokenizeStrategy` (strategy_sdxl.py:28-31) tokenizes to
max_length = 152 / 227 ids (`[BOS] + ≤ 150 / 225 tokens + [EOS] + pad`, bigG's pad id set to 0 at :26; the
weighted path pads alike, strategy_base.py:204-218) and `_get_input_ids` (strategy_base.py:236-272) cuts K
rows `[BOS] + ids[i : i+75] + [ids[-1]]`, i = 1, 76, 151; for bigG a row whose 75 slots end in text gets EOS
last, a row starting `<BOS> <PAD>` gets EOS second. `_get_hidden_states_sdxl` (strategy_sdxl.py:105-169)
encodes the rows apart and joins each encoder's states as slot 0 of row 0, slots 1..75 of every row
(`range(1, K·77, 77)`, :147 / :154) and the very last slot of the last row (the EOS, or bigG's pad when the
caption ends earlier): K·75 + 2 slots; `pool2` is `pool2[::n_size]` with n_size = K·77 // 75 = K (:139, :167),
the first row's, pooled at its first EOS
(`_pool_workaround`, :88-91: argmax of `ids == eos`, slot 0 if the row has none). `--weighted_captions`
multiplies slots 1..75 of row i by that row's weights after the join (`encode_tokens_with_weights`, :195-219),
pool2 unweighted. sdclip's kohya layout makes the same rows and join (sdclip.layout.kohya; one difference, its
docstring: a full first row ending in token id 0 keeps its EOS, so pool2 is pooled there, not at slot 0). The
file holds no length and `is_disk_cached_outputs_expected` (:238-254) checks key names only: sd-scripts reuses
a cache made for another `--max_token_length` without notice, and its batch zero-pads the shorter states
(train_util.py:1766-1780).
"""

from __future__ import annotations

from sdclip.jobs.formats.base import FamilyTable, Format, Key, RowJoin, npz_bytes, refuse, stem

COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
#: SDXL's `--max_token_length 150 / 225`: K ≤ 3 rows of 75 tokens joined as K·75 + 2 slots (module doc)
LONG_ROWS = RowJoin("--max_token_length", max_rows=3, chunk_style="kohya", preset="kohya", per_row=75, once=2)
#: family → `<stem>{tag}` and the npz's arrays, in sd-scripts' order
TABLES = {
    "sdxl": FamilyTable("_te_outputs.npz", (
        Key("hidden_state1", "features", role=0),
        Key("hidden_state2", "features", role=1),
        Key("pool2", "pooled"),
    ), join=LONG_ROWS),
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
    """Rows the family's table holds (`join`), laid out by the layout that makes sd-scripts' rows."""
    if rows == 1:
        return
    join = TABLES[family].join
    lead = f"--format kohya --max-rows {rows}: "
    if join is None or rows > join.max_rows:
        refuse(lead + "sd-scripts' --max_token_length is 75, 150 or 225 (at most 3 rows, SDXL only: SD3 and Flux "
               f"always cache 77 CLIP slots), so it holds no {family} caption of {rows} rows: use --max-rows 1, "
               "or sdclip's own shards (no --format) for longer captions")
    if options.get("chunk_style") != join.chunk_style:
        refuse(lead + f"sd-scripts' {join.flag} {rows * 75} cuts rows of 75 tokens and joins them as "
               f"{join.slots(rows)} slots, which only --preset {join.preset} lays out (this job chunks as "
               f"{options.get('chunk_style')}): add --preset {join.preset}, or use --max-rows 1")


def _name(where: str, caption: str, family: str, table: FamilyTable) -> str:
    """Beside the image: its path without the suffix, then the family's ending."""
    return stem(where) + table.tag


KOHYA = Format("kohya", TABLES, tuple(t.tag for t in TABLES.values()), "images", _name, npz_bytes, _check)
