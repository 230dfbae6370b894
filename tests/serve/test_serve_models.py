"""`sdclip serve` with a model or a T5 tokenizer: the page's families, /api/encode's words, the command line.

- `serve --model <Flux folder>` tokenizes with the folder's tokenizer_2/ (T5): /api/inspect and /api/view
  answer for flux by default, T5 pieces per part, equal to `sdclip inspect --family flux --t5-tokenizer`;
- `serve --t5-tokenizer DIR` without a model does the same for sd3 / flux; with neither, one 400 line names
  what is missing and /api/info marks the families that need it;
- an SDXL server's default family is sdxl;
- /api/encode: errors name the request's fields, warnings come back in the answer (JSON summary, the
  safetensors metadata, a header), not as a UserWarning on the server;
- `serve --help` has no --prompt-2 / --prompt-3; `--device cuda` without CUDA is one line.
"""

from __future__ import annotations

import json
import shutil

import pytest
from starlette.testclient import TestClient

from sdclip.cli.main import main
from sdclip.serve import create_app
from sdclip.tokenizer.t5 import T5Tokenizer
from tiny_pipelines import t5_tokenizer_dir

LOCAL = "http://localhost"
PROMPT = "a (red:1.3) fox in a misty forest BREAK golden hour"


def serve_app(monkeypatch, capsys, *flags: str):  # noqa: ANN001, ANN201
    """The app `sdclip serve FLAGS` would run (uvicorn not started), and what the command printed."""
    import uvicorn

    apps = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: apps.append(self.config.app))
    assert main(["serve", "--port", "0", *flags]) == 0
    return apps[0], capsys.readouterr()


def cli_inspect(capsys, text: str, *flags: str) -> dict:
    capsys.readouterr()
    assert main(["inspect", text, *flags, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    """A diffusers Flux folder, text parts only: CLIP-L + tokenizer/, T5 + tokenizer_2/ (as FLUX.1 ships)."""
    from clip_files import write_tokenizer
    from tiny_models import _write_model_folder, tiny_family
    from tiny_t5 import tiny_t5

    folder = tmp_path_factory.mktemp("flux") / "FLUX.1-tiny"
    folder.mkdir()
    _write_model_folder(tiny_family("sd1").models[0], folder / "text_encoder")
    write_tokenizer(folder / "tokenizer", "<|endoftext|>")
    tiny_t5(seed=1, vocab_size=640).save_pretrained(str(folder / "text_encoder_2"))
    shutil.copytree(t5_tokenizer_dir(), folder / "tokenizer_2")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"]}))
    return folder


def test_flux_model_folder_tokenizes_with_its_t5(monkeypatch, capsys, flux_folder):
    app, _ = serve_app(monkeypatch, capsys, "--model", str(flux_folder))
    want = cli_inspect(capsys, PROMPT, "--family", "flux", "--t5-tokenizer", str(flux_folder))
    with TestClient(app, base_url=LOCAL) as c:
        info = c.get("/api/info").json()
        assert info["family"] == "flux" and info["t5_tokenizer"] is True
        got = c.post("/api/inspect", json={"prompt": PROMPT})  # no family: the model's
        assert got.status_code == 200, got.text
        assert got.json() == want and got.json()["family"] == "flux" and got.json()["t5"]["count"] > 0
        v = c.post("/api/view", json={"prompt": PROMPT}).json()
    assert v["inspect"] == want
    for part, entry in zip(v["view"]["parts"], want["parts"]):
        pieces = part["t5"]["pieces"]
        assert [p["piece"] for p in pieces] == entry["t5"]["pieces"] and pieces[-1]["special"]
        assert part["t5"]["count"] == entry["t5"]["count"] and part["t5"]["capacity"] == 512
        assert any(p["w"] == pytest.approx(1.3) for p in pieces)
        # each piece reads as the text it came from: the word-start mark is not part of the word, and a lone
        # `▁` piece stays a `▁` (never drawn as the next piece's letter)
        for p in pieces[:-1]:
            lone = p["piece"] == "▁"
            assert (p["t"], p["word"]) == (("▁", False) if lone else (p["piece"].removeprefix("▁"), p["piece"] != p["t"]))
    assert any(p["piece"] == "▁" for part in v["view"]["parts"] for p in part["t5"]["pieces"])  # "misty" has one


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_t5_tokenizer_flag_without_a_model(monkeypatch, capsys, family):
    folder = str(t5_tokenizer_dir())
    app, _ = serve_app(monkeypatch, capsys, "--t5-tokenizer", folder)
    want = cli_inspect(capsys, PROMPT, "--family", family, "--t5-tokenizer", folder)
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/api/info").json()["family"] == "sd1"
        r = c.post("/api/inspect", json={"prompt": PROMPT, "family": family})
        assert r.status_code == 200 and r.json() == want
    app, _ = serve_app(monkeypatch, capsys, "--t5-tokenizer", folder, "--family", family)
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/api/info").json()["family"] == family
        assert c.post("/api/inspect", json={"prompt": PROMPT}).json() == want


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_without_a_t5_tokenizer_one_line_says_what_is_missing(family):
    with TestClient(create_app(), base_url=LOCAL) as c:
        info = c.get("/api/info").json()
        assert info["t5_tokenizer"] is False and {"sd3", "flux"} <= set(info["needs_t5"])
        for path in ("/api/inspect", "/api/view"):
            r = c.post(path, json={"prompt": "a fox", "family": family})
            assert r.status_code == 400
            error = r.json()["error"]
            assert f"family {family}" in error and "--t5-tokenizer DIR" in error and "--model" in error
            assert "\n" not in error


def test_sdxl_server_answers_for_sdxl(tmp_path):
    from sdclip.conditioner import Conditioner
    from tiny_models import tiny_family, write_layout

    cond = Conditioner.from_pretrained(write_layout("single.safetensors", tiny_family("sdxl"), tmp_path), "a1111")
    with TestClient(create_app(cond), base_url=LOCAL) as c:
        assert c.get("/api/info").json()["family"] == "sdxl"
        got = c.post("/api/inspect", json={"prompt": PROMPT}).json()
        assert got["family"] == "sdxl" and set(got["parts"][0]["rows_by_encoder"]) == {"clip_l", "clip_g"}
        assert c.post("/api/inspect", json={"prompt": PROMPT, "family": "sd1"}).json()["family"] == "sd1"


def test_t5_tokenizer_and_model_together_is_refused(capsys, flux_folder):
    assert main(["serve", "--port", "0", "--model", str(flux_folder), "--t5-tokenizer", str(flux_folder)]) == 2
    assert "--t5-tokenizer is for a page without --model" in capsys.readouterr().err


# -- /api/encode in the API's words ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1_client(tmp_path_factory):
    from sdclip.conditioner import Conditioner
    from tiny_models import tiny_family, write_layout

    path = write_layout("single.safetensors", tiny_family("sd1"), tmp_path_factory.mktemp("sd1"))
    with TestClient(create_app(Conditioner.from_pretrained(path, "a1111", row_limit=2)), base_url=LOCAL) as c:
        yield c


def test_encode_warnings_come_back_in_the_answer(sd1_client, recwarn):
    from safetensors import safe_open

    r = sd1_client.post("/api/encode?format=json", json={"prompt": "a fox :0.5", "negative": "blurry <lora:x:1>"})
    assert r.status_code == 200, r.text
    notes = r.json()["warnings"]
    assert any(n.startswith("'prompt': its AUTOMATIC1111 AND weight 0.5") for n in notes), notes
    assert any(n.startswith("'negative': 1 extra-network tag(s) removed") for n in notes), notes
    r = sd1_client.post("/api/encode", json={"prompt": ["a fox", "a dog :0.5"]})
    assert r.status_code == 200
    header = json.loads(r.headers["x-sdclip-warnings"])
    assert len(header) == 1 and header[0].startswith("'prompt' item 2: its AUTOMATIC1111 AND weight")
    path = "/dev/null"
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(r.content)
        f.flush()
        path = f.name
        with safe_open(path, "pt") as st:
            assert json.loads(st.metadata()["warnings"]) == header
    assert "x-sdclip-warnings" not in sd1_client.post("/api/encode", json={"prompt": "a fox"}).headers
    assert [w for w in recwarn if "AND weight" in str(w.message)] == []  # nothing on the server's stderr


@pytest.mark.parametrize(
    "body, starts, absent",
    [
        ({"prompt": "a AND b"}, "'prompt' uses AUTOMATIC1111's AND", "sdclip encode"),
        ({"prompt": "a", "negative": "x AND y"}, "'negative' uses AUTOMATIC1111's AND", "sdclip encode"),
        ({"prompt": ["a", "b AND c"]}, "'prompt' uses AUTOMATIC1111's AND", "--syntax plain,"),
        ({"prompt": "x " * 400}, "'prompt': this prompt needs more than row_limit=2", "(--row-limit)"),
        ({"prompt": ["a", "x " * 400]}, "'prompt' item 2: this prompt needs", "(--row-limit)"),
        ({"prompt": "a", "negative": "x " * 400}, "'negative': this prompt needs", "(--row-limit)"),
        ({"prompt": ["a", "(b:1000)"]}, "'prompt' item 2: weight 1000", "\n"),
    ],
)
def test_encode_errors_name_api_fields(sd1_client, body, starts, absent):
    r = sd1_client.post("/api/encode?format=json", json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error.startswith(starts) and absent not in error, error


# -- the command line ----------------------------------------------------------------------------


def test_help_has_no_per_encoder_prompts(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--prompt-2" not in out and "--prompt-3" not in out
    assert "--t5-tokenizer" in out and "--allow-host" in out


@pytest.mark.parametrize("device, words", [("cuda", "sees no CUDA GPU"), ("gpu", "did you mean --device cuda")])
def test_device_without_it_is_one_line(capsys, tmp_path, device, words):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from tiny_models import tiny_family, write_layout

    path = write_layout("single.safetensors", tiny_family("sd1"), tmp_path)
    assert main(["serve", "--port", "0", "--model", str(path), "--device", device]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_unreadable_t5_tokenizer_folder_is_one_line(capsys, tmp_path):
    assert main(["serve", "--port", "0", "--t5-tokenizer", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a T5 tokenizer folder" in err and len(err.strip().splitlines()) == 1
