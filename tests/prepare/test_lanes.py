"""One prepare loop: per-encoder prompts (prompt_2 / prompt_3) honour every option exactly as one prompt does.

Before encoder kinds were lanes, a second path laid out per-encoder prompts (and every SD3 / Flux prompt) and
dropped options on the way: `unknown_embedding` (ComfyUI's `embedding:missing` raised), `embedding_match`
(A1111's token-ids matching), the Long-CLIP check. Here every preset × family goes through both entrances:
the text alone, and (text, text + " ", text + " ") — the same tokens, but each encoder handed its own text."""

from __future__ import annotations

import pytest

from sdclip.conventions.family import FAMILIES, get_family
from sdclip.conventions.presets import PRESETS, Options
from sdclip.lanes import LANES, get_lane, lane_of, lanes_of
from sdclip.layout import RowLimitError
from sdclip.prepare import prepare
from sdclip.tokenizer import Tokenizer
from sdclip.tokenizer.t5 import T5Tokenizer
from tiny_pipelines import t5_tokenizer_dir

EMBEDDINGS = {"fox": 2}
#: (text, option overrides, row_limit): each reaches an option the second path used to drop
CASES = [
    ("a (red:1.3) fox in a misty forest, BREAK golden hour", {}, None),
    ("a embedding:missing fox", {}, None),  # comfy: dropped with a warning; others: a plain word or an error
    ("a redfox, embedding:fox", {}, None),  # a1111 matches token ids ("redfox" ends in fox), the others words
    ("a fox AND a (cat:0.5)", {}, None),
    ("a (red:1.5) fox, (blue:0.5) sky, green grass", {"token_normalization": "mean"}, None),
    ("a fox in a forest", {"layout": "long"}, None),  # Long-CLIP's layout on a 77-position family
    (", ".join(f"tag{i}" for i in range(120)), {}, 1),  # past the row limit
]


@pytest.fixture(scope="module")
def t5() -> T5Tokenizer:
    return T5Tokenizer.from_folder(t5_tokenizer_dir())


def outcome(text, options, family, t5, row_limit):  # noqa: ANN001, ANN201
    """What prepare gives: ("ok", rows per role, warnings) or ("error", type, message)."""
    try:
        prep = prepare(text, options, family, Tokenizer.default(options.normalize), EMBEDDINGS,
                       row_limit=row_limit, t5_tokenizer=t5)
    except ValueError as exc:
        return ("error", type(exc).__name__, str(exc))
    rows = [[(r.ids, r.weights, r.keep, r.eos, r.token_count) for r in part.rows] for part in prep.parts]
    vectors = [[sorted(part.stream_for(e).vectors.values()) for e in range(len(family.roles))] for part in prep.parts]
    return ("ok", rows, vectors, prep.prompt.warnings, [p.weight for p in prep.parts])


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("family", tuple(FAMILIES))
@pytest.mark.parametrize("case", range(len(CASES)))
def test_per_encoder_prompts_match_one_prompt(preset, family, case, t5):
    text, overrides, row_limit = CASES[case]
    options = Options.preset(preset, **overrides)
    fam = get_family(family)
    one = outcome(text, options, fam, t5, row_limit)
    each = outcome((text, text + " ", text + " "), options, fam, t5, row_limit)
    assert each == one


def test_comfy_unknown_embedding_with_a_prompt_2_warns_as_without():
    """The issue's first reproduction: with a prompt_2 the comfy preset raised UnknownEmbeddingError."""
    options, sdxl = Options.preset("comfy"), get_family("sdxl")
    one = prepare("a embedding:missing fox", options, sdxl, Tokenizer.default(options.normalize), {})
    each = prepare(("a embedding:missing fox", "a cat"), options, sdxl, Tokenizer.default(options.normalize), {})
    assert one.prompt.warnings and each.prompt.warnings == one.prompt.warnings
    assert each.parts[0].rows[0].ids == one.parts[0].rows[0].ids


def test_a1111_token_id_embedding_match_with_a_prompt_2():
    """The second: A1111 finds `fox` inside `redfox` by token ids; with a prompt_2 it did not."""
    options, sdxl = Options.preset("a1111"), get_family("sdxl")
    each = prepare(("a redfox", "a cat"), options, sdxl, Tokenizer.default(options.normalize), EMBEDDINGS)
    assert sorted(each.parts[0].stream_for(0).vectors.values()) == [("fox", 0), ("fox", 1)]
    assert not each.parts[0].stream_for(1).vectors  # CLIP-G reads "a cat"


def test_long_layout_check_with_a_prompt_2():
    options = Options.preset("a1111", layout="long")
    with pytest.raises(ValueError, match="Long-CLIP"):
        prepare(("a fox", "a cat"), options, get_family("sdxl"), Tokenizer.default(options.normalize))


def test_prompt_2_rows_are_its_own_one_prompt_rows():
    """A role reading prompt_2 gets exactly the rows that text gets alone; the others the main prompt's."""
    options, sdxl = Options.preset("a1111"), get_family("sdxl")
    tok = Tokenizer.default(options.normalize)
    each = prepare(("a (red:1.2) fox", "a blue cat, BREAK snow"), options, sdxl, tok)
    main, second = prepare("a (red:1.2) fox", options, sdxl, tok), prepare("a blue cat, BREAK snow", options, sdxl, tok)
    assert each.parts[0].rows[0] == main.parts[0].rows[0] and each.parts[0].rows[1] == second.parts[0].rows[1]


def test_row_limit_counts_the_widest_role():
    """The row limit counts rows of the family's length across parts, the widest role of a part (CLIP-G
    reading a longer prompt_2 counts too), T5's one sequence per part not at all."""
    options, sdxl = Options.preset("a1111"), get_family("sdxl")
    long = ", ".join(f"tag{i}" for i in range(120))
    with pytest.raises(RowLimitError):
        prepare(("a fox AND a cat", "a fox AND " + long), options, sdxl, Tokenizer.default(options.normalize), row_limit=2)


def test_every_role_has_a_lane_and_lanes_own_their_rules(t5):
    assert {r.kind for f in FAMILIES.values() for r in f.roles} <= set(LANES)
    sd3 = get_family("sd3")
    clip, _, t5_lane = lanes_of(sd3)
    assert clip is get_lane("clip") and t5_lane is lane_of(sd3.roles[2])
    assert clip.empty_ids(sd3.roles[1], 5) == (49406, 49407, 0, 0, 0)
    assert t5_lane.empty_ids(sd3.roles[2], 4) == (1, 0, 0, 0)
    assert t5_lane.weighting(Options.preset("a1111")) == "none" and clip.weighting(Options.preset("a1111")) == "a1111"
    with pytest.raises(ValueError, match="unknown encoder kind"):
        get_lane("no-such-kind")


def test_lanes_and_prepare_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys, sdclip.lanes, sdclip.prepare, sdclip.layout.t5; assert 'torch' not in sys.modules"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("family, clip_like", [("sd3", "sdxl"), ("flux", "sd1")])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_t5_families_lay_out_clip_as_clip_families_do(preset, family, clip_like, case, t5):
    """SD3 / Flux prompts all took the second path: their CLIP rows must be the CLIP-only family's own
    (same towers, same pad ids), warnings and errors included."""
    text, overrides, row_limit = CASES[case]
    options = Options.preset(preset, **overrides)
    mixed = outcome(text, options, get_family(family), t5, row_limit)
    plain = outcome(text, options, get_family(clip_like), t5, row_limit)
    if plain[0] == "error":  # the same refusal, naming the family asked for
        assert mixed == (*plain[:2], plain[2].replace(f"a {clip_like} model", f"a {family} model"))
        return
    n = len(get_family(clip_like).roles)
    assert mixed[0] == "ok", mixed
    assert [p[:n] for p in mixed[1]] == plain[1] and [v[:n] for v in mixed[2]] == plain[2] and mixed[3:] == plain[3:]
