"""`sdclip attention` on a tiny random SD1 pipeline saved to a folder, and the pictures it draws."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from sdclip.attention import AttentionMaps, Slot
from sdclip.attention.pictures import colorize, contact_sheet, overlay
from sdclip.cli.main import main
from tiny_pipelines import sd1_pipeline

PROMPT = "a photo of a red fox, jumping"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("pipe") / "tiny-sd1"
    sd1_pipeline().save_pretrained(str(path))
    return str(path)


def test_attention_command_writes_maps_tokens_image_and_pictures(model: str, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    args = ["attention", "--model", model, "--prompt", PROMPT, "--negative", "blurry", "--steps", "2", "--seed", "1"]
    assert main([*args, "--size", "32x16", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    with safe_open(str(out / "maps.safetensors"), "pt") as f:
        maps = f.get_tensor("maps")
        meta = f.metadata()
    assert maps.dtype == torch.float32 and maps.shape == (77, 8, 16)  # latent = image / 2 for the tiny VAE
    torch.testing.assert_close(maps.sum(0), torch.ones(8, 16), rtol=0, atol=1e-5)
    assert meta["prompt"] == PROMPT and meta["image_size"] == "32x16"
    tokens = json.loads((out / "tokens.json").read_text("utf-8"))
    assert len(tokens) == 77 and [t["index"] for t in tokens] == list(range(77))
    assert tokens[0]["kind"] == "BOS" and tokens[6]["text"] == "fox" and tokens[6]["word_span"] == [17, 20]
    assert {t["kind"] for t in tokens} == {"BOS", "EOS", "pad", "token"}
    assert Image.open(out / "image.png").size == (32, 16)
    words = sorted(p.name for p in (out / "words").iterdir())
    assert words == ["00_a.png", "01_photo.png", "02_of.png", "03_a.png", "04_red.png", "05_fox.png", "06_jumping.png"]
    assert Image.open(out / "contact_sheet.png").size[0] > 256
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind

    # a second run into the same folder replaces the result (a shorter prompt leaves no stale overlay)
    assert main([*args[:3], "--prompt", "red fox", "--steps", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "words").iterdir()) == ["00_red.png", "01_fox.png"]


def test_attention_command_rejects_bad_input(model: str, tmp_path, capsys) -> None:  # noqa: ANN001
    base = ["attention", "--model", model, "--prompt", "fox", "--out", str(tmp_path / "o")]
    assert main([*base, "--size", "big"]) == 2
    assert "--size wants WxH" in capsys.readouterr().err
    assert main([*base, "--size", "18x18"]) == 2
    assert "multiples of 8" in capsys.readouterr().err
    assert main([*base, "--trace-steps", "5:2"]) == 2
    assert main([*base, "--resolutions", "3"]) == 2
    assert main(["attention", "--model", str(tmp_path), "--prompt", "fox", "--out", str(tmp_path / "o")]) == 2
    assert "model_index.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_pictures() -> None:
    assert colorize(torch.tensor([[0.0, 1.0]]).numpy()).shape == (1, 2, 3)
    image = Image.new("RGB", (16, 16), "gray")
    heat = torch.zeros(4, 4)
    heat[0, 0] = 1.0
    pic = overlay(image, heat, "fox")
    assert pic.size == (256, 256 + 18)
    slots = tuple(Slot(i, t, t, w, s, 0, 1.0, k) for i, (t, w, s, k) in enumerate(
        [("<|startoftext|>", "", None, "BOS"), ("fox", "fox", (0, 3), "token"), ("<|endoftext|>", "", None, "EOS")]))
    maps = AttentionMaps(torch.full((3, 4, 4), 1 / 3), slots, (16, 16))
    sheet = contact_sheet(maps, image, side=64, columns=2)
    assert sheet.size == (2 * 64 + 4, 2 * (64 + 18) + 4)  # image, fox, [BOS], [EOS]
    with pytest.raises(ValueError, match="3 slots for 2 maps"):
        AttentionMaps(torch.zeros(2, 4, 4), slots, (16, 16))
