"""`sdclip embed --format kohya --family sdxl --preset kohya --max-rows 2|3` against sd-scripts'
`--cache_text_encoder_outputs_to_disk` with `--max_token_length 150|225`, transliterated from kohya-ss/sd-scripts
commit 48d368fa (tests/kohya_oracle.py: `SdxlTokenizeStrategy.tokenize` / `tokenize_with_weights`, the
`_get_input_ids` rows, `_get_hidden_states_sdxl`'s K·75+2 join and `pool2[::K]`, `encode_tokens_with_weights`;
below: `SdxlTextEncoderOutputsCachingStrategy.cache_batch_outputs`, `is_disk_cached_outputs_expected`,
`load_outputs_npz`, strategy_sdxl.py:238-306). Both run the same tiny SDXL weights; sd-scripts' tokenizers are
transformers' CLIPTokenizer over the real BPE files, bigG's pad id set to 0 as `SdxlTokenizeStrategy` does.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPTokenizer

import kohya_oracle as ko
from sdclip.cli.main import main
from sdclip.jobs.formats import check_format
from sdclip.jobs.manifest import JobError
from tiny_models import tiny_family, write_layout, write_tokenizer

PLAIN = {
    "short.png": "a red fox in the snow",  # shorter than one row: the later rows are empty rows
    "mid.png": ", ".join(f"tag{i} word" for i in range(22)),  # 99 tokens: two rows, at K = 3 a third empty
    "long.png": ", ".join(f"tag{i} word" for i in range(40)),  # 189 tokens: cut at K = 2, three rows at K = 3
    "full.png": "word " * 150,  # fills 150 exactly
    "cut.png": "masterpiece, " * 130,  # past 225 tokens: cut to K·75
}
WEIGHTED = {
    "w_short.png": "a (red:1.3) fox in [snow]",
    # 168 tokens: cut at K = 2
    "w_long.png": "masterpiece, " * 60 + "(red fox:1.4), [snow], " + "(tag) " * 40 + "\\(literal\\)",
    "w_zero.png": "(word) " * 75 + '!"#' + " after",  # bigG's row 2 starts with token id 0 ("!"): EOS there
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny SDXL weights as a single file for sdclip, and the same modules for sd-scripts."""
    fam = tiny_family("sdxl")
    return write_layout("single.safetensors", fam, tmp_path_factory.mktemp("sdxl")), fam.models


@pytest.fixture(scope="module")
def tokenizers():
    """`SdxlTokenizeStrategy.__init__` (strategy_sdxl.py:23-26): two CLIPTokenizers, the second's pad id 0."""
    with tempfile.TemporaryDirectory() as tmp:
        tok1 = CLIPTokenizer.from_pretrained(str(write_tokenizer(Path(tmp) / "tok")))
        tok2 = CLIPTokenizer.from_pretrained(str(write_tokenizer(Path(tmp) / "tok")))
    tok2.pad_token_id = 0
    return ko.Tok(tok1, tok1.pad_token_id), ko.Tok(tok2, tok2.pad_token_id)


def sd_scripts_cache(folder: Path, captions: dict[str, str], models, toks, max_token_length: int, weighted: bool):
    """`cache_batch_outputs` (strategy_sdxl.py:263-304) into folder: one np.savez per image."""
    texts = list(captions.values())
    with torch.no_grad():
        if weighted:
            tokens_list, weights_list = ko.tokenize_with_weights(toks, texts, max_token_length)
            hidden_state1, hidden_state2, pool2 = ko.sdxl_encode_tokens_with_weights(
                toks, models, tokens_list, weights_list)
        else:
            tokens1, tokens2 = ko.tokenize(toks, texts, max_token_length)
            hidden_state1, hidden_state2, pool2 = ko._get_hidden_states_sdxl(tokens1, tokens2, *toks, *models)
    hidden_state1, hidden_state2, pool2 = (t.float().cpu().numpy() for t in (hidden_state1, hidden_state2, pool2))
    folder.mkdir(parents=True, exist_ok=True)
    for i, rel in enumerate(captions):
        np.savez(folder / (os.path.splitext(rel)[0] + "_te_outputs.npz"),
                 hidden_state1=hidden_state1[i], hidden_state2=hidden_state2[i], pool2=pool2[i])


def is_disk_cached_outputs_expected(npz_path: str) -> bool:
    """strategy_sdxl.py:238-254 (cache_to_disk, no skip): key names only."""
    if not os.path.exists(npz_path):
        return False
    npz = np.load(npz_path)
    return not ("hidden_state1" not in npz or "hidden_state2" not in npz or "pool2" not in npz)


def load_outputs_npz(npz_path: str) -> list[np.ndarray]:
    """strategy_sdxl.py:256-261."""
    data = np.load(npz_path)
    return [data["hidden_state1"], data["hidden_state2"], data["pool2"]]


def none_or_stack_elements(tensors_list, converter):  # noqa: ANN001, ANN201
    """train_util.py:1749-1781, the dataset's batch of cached outputs: a batch mixing lengths is zero-padded."""
    if len(tensors_list) == 0 or tensors_list[0] is None or len(tensors_list[0]) == 0 or tensors_list[0][0] is None:
        return None
    result = []
    for i in range(len(tensors_list[0])):
        tensors = [x[i] for x in tensors_list]
        if tensors[0].ndim == 0:
            result.append(torch.stack([converter(x[i]) for x in tensors_list]))
            continue
        min_len = min([len(x) for x in tensors])
        max_len = max([len(x) for x in tensors])
        if min_len == max_len:
            result.append(torch.stack([converter(x) for x in tensors]))
        else:
            tensors = [converter(x) for x in tensors]
            if tensors[0].ndim == 1:
                result.append(torch.stack([(torch.nn.functional.pad(x, (0, max_len - x.shape[0]))) for x in tensors]))
            else:
                result.append(torch.stack([(torch.nn.functional.pad(x, (0, 0, 0, max_len - x.shape[0]))) for x in tensors]))
    return result


def images(folder: Path, captions: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for rel, caption in captions.items():
        (folder / rel).write_bytes(b"\x89PNG not decoded")
        (folder / rel).with_suffix(".txt").write_text(caption, encoding="utf-8")
    return folder


def embed(model: Path, folder: Path, out: Path, rows: int, *extra: str) -> int:
    return main(["embed", "--model", str(model), "--captions", str(folder), "--out", str(out), "--format", "kohya",
                 "--family", "sdxl", "--max-rows", str(rows), *extra])


def close(a: np.ndarray, b: np.ndarray) -> None:
    torch.testing.assert_close(torch.from_numpy(a), torch.from_numpy(b), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("rows", [2, 3])
@pytest.mark.parametrize("captions, weighted", [(PLAIN, False), (PLAIN, True), (WEIGHTED, True)],
                         ids=["plain", "plain-weighted_captions", "weighted"])
def test_npz_equals_sd_scripts_max_token_length(tmp_path, tiny, tokenizers, rows, captions, weighted):
    """sd-scripts with --max_token_length rows·75 (and --weighted_captions where `weighted`) writes what
    sdclip's --preset kohya --max-rows rows writes: names, order, shapes, dtypes, values (fp32 rounding)."""
    model, models = tiny
    folder = images(tmp_path / "images", captions)
    assert embed(model, folder, tmp_path / "out", rows, "--preset", "kohya") == 0
    theirs = tmp_path / "sd-scripts"
    sd_scripts_cache(theirs, captions, models, tokenizers, rows * 75, weighted)
    slots = rows * 75 + 2
    for rel in captions:
        name = os.path.splitext(rel)[0] + "_te_outputs.npz"
        ours = str(folder / name)
        assert is_disk_cached_outputs_expected(ours)
        assert zipfile.ZipFile(ours).namelist() == zipfile.ZipFile(theirs / name).namelist()
        got, want = load_outputs_npz(ours), load_outputs_npz(str(theirs / name))
        assert [(a.shape, a.dtype) for a in got] == [(a.shape, a.dtype) for a in want]
        assert got[0].shape[0] == got[1].shape[0] == slots and got[2].ndim == 1
        for a, b in zip(got, want):
            close(a, b)
    batch = none_or_stack_elements([load_outputs_npz(str(folder / (os.path.splitext(rel)[0] + "_te_outputs.npz")))
                                    for rel in captions], torch.FloatTensor)
    assert [tuple(t.shape[:2]) for t in batch] == [(len(captions), slots)] * 2 + [(len(captions), batch[2].shape[1])]
    assert main(["embed", "--verify", str(tmp_path / "out")]) == 0


def test_sd_scripts_pads_a_batch_mixing_77_and_152_slots_without_notice(tmp_path, tiny):
    """Why one K per image folder: sd-scripts' cache check reads key names only, and its batch zero-pads
    the shorter states (train_util.py:1766-1780), so a stale 77-slot file trains silently beside 152-slot ones."""
    model, _ = tiny
    folder = images(tmp_path / "images", {"a.png": PLAIN["mid.png"]})
    assert embed(model, folder, tmp_path / "one", 1, "--preset", "kohya") == 0
    (folder / "a_te_outputs.npz").rename(folder / "old_te_outputs.npz")
    assert embed(model, folder, tmp_path / "two", 2, "--preset", "kohya") == 0
    paths = [str(folder / "old_te_outputs.npz"), str(folder / "a_te_outputs.npz")]
    assert all(is_disk_cached_outputs_expected(p) for p in paths)
    h1 = none_or_stack_elements([load_outputs_npz(p) for p in paths], torch.FloatTensor)[0]
    assert h1.shape[:2] == (2, 152) and not h1[0, 77:].any() and h1[1, 77:].any()


def test_bf16_is_stored_as_float32_at_152_slots(tmp_path, tiny):
    """sd-scripts upcasts bf16 outputs before np.savez (strategy_sdxl.py:282-287); so does sdclip's writer."""
    model, _ = tiny
    folder = images(tmp_path / "images", {"a.png": PLAIN["long.png"]})
    assert embed(model, folder, tmp_path / "out", 2, "--preset", "kohya", "--dtype", "bf16") == 0
    h1, h2, pool2 = load_outputs_npz(str(folder / "a_te_outputs.npz"))
    assert h1.shape[0] == h2.shape[0] == 152 and {a.dtype for a in (h1, h2, pool2)} == {np.dtype(np.float32)}


def test_a_full_first_row_ending_in_token_0_differs_from_sd_scripts_in_pool2_only(tmp_path, tiny, tokenizers):
    """sd-scripts leaves bigG's full first row ending in id 0 ("!") without an EOS and pools its slot 0
    (`_pool_workaround`: argmax of no match); sdclip's kohya layout keeps the EOS and pools there
    (sdclip.layout.kohya). The slot is not in the join and attention is causal: the states are equal."""
    model, models = tiny
    captions = {"z.png": "x " * 74 + '!"# ' + "tail"}
    folder = images(tmp_path / "images", captions)
    assert embed(model, folder, tmp_path / "out", 2, "--preset", "kohya") == 0
    sd_scripts_cache(tmp_path / "s", captions, models, tokenizers, 150, weighted=True)
    got = load_outputs_npz(str(folder / "z_te_outputs.npz"))
    want = load_outputs_npz(str(tmp_path / "s" / "z_te_outputs.npz"))
    close(got[0], want[0])
    close(got[1], want[1])
    assert not np.allclose(got[2], want[2], atol=1e-3)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_more_rows_on_sd3_and_flux_are_refused_before_any_model_loads(tmp_path, capsys, family):
    """sd3_train_network.py:57 / flux_train_network.py:74: --max_token_length is unused, CLIP is cached at 77
    (strategy_sd3.py:37-38). The model is garbage bytes: a refusal after loading would be a loader error."""
    folder = images(tmp_path / "images", {"a.png": "a fox"})
    model = tmp_path / "not-a-model.safetensors"
    model.write_bytes(b"\x00" * 64)
    code = main(["embed", "--model", str(model), "--captions", str(folder), "--out", str(tmp_path / "o"),
                 "--format", "kohya", "--family", family, "--preset", "kohya", "--max-rows", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("sdclip: --format kohya --max-rows 2:")
    assert f"no {family} caption of 2 rows" in err and "--max-rows 1" in err
    assert not (tmp_path / "o").exists() and not list(folder.rglob("*.npz"))


@pytest.mark.parametrize("preset", ["a1111", "comfy", "compel", "diffusers"])
def test_more_rows_under_another_preset_are_refused_naming_preset_kohya(preset):
    from dataclasses import asdict

    from sdclip.conventions.presets import Options

    options = asdict(Options.preset(preset, max_rows=2))
    with pytest.raises(JobError) as exc:
        check_format("kohya", "sdxl", "images", 2, options)
    line = str(exc.value)
    assert "\n" not in line and "--preset kohya" in line and "152 slots" in line
    check_format("kohya", "sdxl", "images", 2, asdict(Options.preset("kohya", max_rows=2)))
    check_format("kohya", "sdxl", "images", 1, options)  # one row: every preset, as before
