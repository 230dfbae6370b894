"""`sdclip attention --model <SD3 | Flux | Chroma folder>` on tiny random MM-DiT pipelines saved to folders:
maps at the image-token grid, tokens labelled by each encoder's tokenizer, the blocks read, pictures, and
one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open

import tiny_mmdit
from sdclip.cli.main import main

PROMPT = "a photo of a red fox, jumping"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("mmdit")
    out = {}
    for kind in ("sd3", "flux", "chroma"):
        getattr(tiny_mmdit, kind)().save_pretrained(str(root / kind))
        out[kind] = str(root / kind)
    return out


def _read(out) -> tuple[torch.Tensor, dict, list]:  # noqa: ANN001
    with safe_open(str(out / "maps.safetensors"), "pt") as f:
        maps, meta = f.get_tensor("maps"), f.metadata()
    return maps, meta, json.loads((out / "tokens.json").read_text("utf-8"))


def test_sd3_folder(folders: dict, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "sd3"
    args = ["attention", "--model", folders["sd3"], "--prompt", PROMPT, "--negative", "blurry", "--steps", "2"]
    assert main([*args, "--size", "32x48", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    maps, meta, tokens = _read(out)
    # the a1111 preset (the default): T5 as long as the CLIP block; 32×48 / (VAE 2 × patch 2) tokens
    assert maps.dtype == torch.float32 and maps.shape == (77 + 77, 12, 8)
    torch.testing.assert_close(maps.sum(0), torch.ones(12, 8), rtol=0, atol=1e-5)
    assert json.loads(meta["blocks"]) == ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]
    assert meta["reading"] == "softmax" and meta["image_size"] == "32x48" and "image-token grid" in meta["layout"]
    assert [t["encoder"] for t in tokens] == ["clip"] * 77 + ["t5"] * 77
    assert tokens[0]["kind"] == "BOS" and tokens[5]["text"] == "red" and tokens[77]["encoder"] == "t5"
    assert {t["kind"] for t in tokens[77:]} == {"token", "</s>", "pad"}
    assert Image.open(out / "image.png").size == (32, 48)
    assert (out / "contact_sheet.png").is_file() and any(p.name.endswith("_fox.png") for p in (out / "words").iterdir())



def test_flux_single_blocks_and_chroma_output_reading(folders: dict, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "flux"
    base = ["--prompt", PROMPT, "--steps", "1", "--size", "32x32"]
    assert main(["attention", "--model", folders["flux"], *base, "--blocks", "single", "--out", str(out)]) == 0
    maps, meta, tokens = _read(out)
    assert maps.shape == (512, 8, 8) and {t["encoder"] for t in tokens} == {"t5"}
    assert json.loads(meta["blocks"]) == ["single_transformer_blocks.0.attn", "single_transformer_blocks.1.attn"]
    out = tmp_path / "chroma"
    assert main(["attention", "--model", folders["chroma"], *base, "--negative", "blurry", "--reading", "output",
                 "--out", str(out)]) == 0
    maps, meta, tokens = _read(out)
    assert maps.shape == (512, 8, 8) and meta["reading"] == "output"
    words = [t["word"] for t in tokens if t["kind"] == "token"]
    assert words[0] == "a" and "fox" in words and tokens[len(words)]["kind"] == "</s>"


def test_contact_sheet_shows_t5_end_token() -> None:
    from sdclip.attention import AttentionMaps, Slot
    from sdclip.attention.pictures import contact_sheet

    slots = (Slot(0, "fox", "▁fox", "fox", (0, 3), 0, 1.0, "token", "t5"), Slot(1, "</s>", "</s>", "", None, 0, 1.0, "</s>", "t5"))
    sheet = contact_sheet(AttentionMaps(torch.full((2, 4, 4), 0.5), slots, (16, 16)), Image.new("RGB", (16, 16)),
                          side=64, columns=2)
    assert sheet.size == (2 * 64 + 4, 2 * (64 + 18) + 4)  # image, fox, [</s>]


def test_mmdit_bad_input_one_line(folders: dict, tmp_path, capsys) -> None:  # noqa: ANN001
    base = ["attention", "--model", folders["sd3"], "--prompt", "fox", "--out", str(tmp_path / "o")]
    assert main([*base, "--size", "30x32"]) == 2
    err = capsys.readouterr().err
    assert "multiples of 4" in err and err.count("\n") == 1
    assert main([*base, "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "steps" in err and err.count("\n") == 1
    assert main([*base, "--blocks", "single"]) == 2  # SD3 has joint blocks only
    err = capsys.readouterr().err
    assert "single" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_unet_pipelines_refuse_the_mmdit_flags(tmp_path, capsys) -> None:  # noqa: ANN001
    from tiny_pipelines import sd1_pipeline

    sd1_pipeline().save_pretrained(str(tmp_path / "sd1"))
    capsys.readouterr()  # the saving's progress bars
    base = ["attention", "--model", str(tmp_path / "sd1"), "--prompt", "fox", "--out", str(tmp_path / "o")]
    assert main([*base, "--blocks", "joint"]) == 2
    err = capsys.readouterr().err
    assert "--blocks, --reading and --true-cfg-scale are for SD3 / Flux / Chroma" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_flux_true_cfg_flags(folders: dict, tmp_path, capsys) -> None:  # noqa: ANN001
    """--negative + --true-cfg-scale: FluxPipeline's true CFG (the image changes, the maps are the positive
    pass's: at step 0 equal to a run without it); --negative alone is noted as unread; refusals are one line."""
    base = ["attention", "--model", folders["flux"], "--prompt", PROMPT, "--steps", "1", "--size", "32x32"]
    on, off = tmp_path / "on", tmp_path / "off"
    assert main([*base, "--negative", "blurry", "--true-cfg-scale", "4", "--out", str(on)]) == 0
    assert "note" not in capsys.readouterr().err
    assert main([*base, "--negative", "blurry", "--out", str(off)]) == 0
    err = capsys.readouterr().err
    assert "reads --negative only with --true-cfg-scale > 1" in err and err.count("\n") == 1
    maps_on, meta_on, _ = _read(on)
    maps_off, meta_off, _ = _read(off)
    assert meta_on["true_cfg_scale"] == "4.0" and "true_cfg_scale" not in meta_off
    assert meta_on["negative"] == "blurry"
    torch.testing.assert_close(maps_on, maps_off, atol=1e-6, rtol=0)
    assert Image.open(on / "image.png").tobytes() != Image.open(off / "image.png").tobytes()
    bad = tmp_path / "bad"
    assert main([*base, "--true-cfg-scale", "4", "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "--true-cfg-scale needs --negative" in err and err.count("\n") == 1
    sd3 = ["attention", "--model", folders["sd3"], "--prompt", PROMPT, "--steps", "1", "--size", "32x32"]
    assert main([*sd3, "--negative", "x", "--true-cfg-scale", "4", "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "runs CFG through --guidance" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:  # argparse's own refusal of the checked type
        main([*base, "--negative", "x", "--true-cfg-scale", "nan", "--out", str(bad)])
    assert e.value.code == 2 and "not a finite number" in capsys.readouterr().err
    assert not bad.exists()
