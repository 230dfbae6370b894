"""`sdclip encode` lays every prompt out once and encodes every prompt once: the layouts made to size the
file are the ones encoded, and the first batch (which fixes the file's shapes) is written, not encoded again."""

from __future__ import annotations

from collections import Counter

from safetensors.torch import load_file

from sdclip.cli.main import main
from sdclip.conditioner import Conditioner
from tiny_models import tiny_family, write_layout

PROMPTS = ["a red fox", "a blue cat, BREAK in the snow", "", "a dog on a sofa", "a (green:1.2) frog"]


def test_each_prompt_prepared_and_encoded_once(tmp_path, monkeypatch):
    model = write_layout("single.safetensors", tiny_family("sd1"), tmp_path / "sd1")
    src = tmp_path / "prompts.txt"
    src.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    prepared, encoded = Counter(), Counter()
    prepare, encode = Conditioner.prepare, Conditioner.encode

    def counting_prepare(self, text):  # noqa: ANN001, ANN202
        prepared[text] += 1
        return prepare(self, text)

    def counting_encode(self, prompt, negative=None, **kwargs):  # noqa: ANN001, ANN202
        encoded.update([prompt] if isinstance(prompt, str) else prompt)
        return encode(self, prompt, negative, **kwargs)

    monkeypatch.setattr(Conditioner, "prepare", counting_prepare)
    monkeypatch.setattr(Conditioner, "encode", counting_encode)
    out = tmp_path / "out.safetensors"
    assert main(["encode", "--model", str(model), "--prompts-file", str(src), "--negative", "blurry",
                 "--batch-size", "2", "--out", str(out)]) == 0
    assert {p: prepared[p] for p in PROMPTS} == {p: 1 for p in PROMPTS} and prepared["blurry"] == 1
    assert {p: encoded[p] for p in PROMPTS} == {p: 1 for p in PROMPTS}
    got = load_file(out)
    want = Conditioner.from_pretrained(model, "a1111")(PROMPTS, "blurry").diffusers_kwargs()
    assert got["prompt_embeds"].shape == want["prompt_embeds"].shape
    assert (got["prompt_embeds"] - want["prompt_embeds"]).abs().max() < 1e-5
