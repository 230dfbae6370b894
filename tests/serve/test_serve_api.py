"""`sdclip serve`'s JSON API in-process (starlette's TestClient), against the CLI and the library.

- /api/inspect answers exactly what `sdclip inspect --json` prints (a subprocess for two cases, the
  in-process CLI for the rest);
- /api/view: its inspect object is describe() of the text in force at the step; tokens read as typed;
  BREAK, window overlaps, embeddings, AND parts and dropped text are all reported;
- bad input → 400 {"error", "position"}; 413 over the size limit; 503 past the time limit; unknown fields
  (a file path among them) refused; no CORS unless asked; bearer token on /api/encode;
- /api/encode's safetensors body is the Conditioner's diffusers_kwargs() bit for bit;
- every path of /openapi.json is served, and every served path is described;
- no torch imported without a model.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from starlette.testclient import TestClient

from sdclip.cli.main import main
from sdclip.conventions.family import get_family
from sdclip.conventions.presets import Options
from sdclip.describe import describe
from sdclip.serve import create_app
from sdclip.serve.openapi import SPEC
from sdclip.syntax import schedule
from sdclip.tokenizer import Tokenizer

LOCAL = "http://localhost"  #: a server without --token answers loopback names only
LONG = ", ".join(f"a {c} fox with {c} eyes under a (c sky:1.2)" for c in
                 ("red", "blue", "green", "golden", "silver", "purple", "orange", "white", "black", "pink"))

#: (request body, the same as `sdclip inspect` flags)
CASES = [
    ({"prompt": "a (red:1.3) fox in a [misty] forest, BREAK golden hour"}, []),
    ({"prompt": LONG, "layout": "window", "stride": 40}, ["--layout", "window", "--stride", "40"]),
    ({"prompt": LONG, "preset": "compel"}, ["--preset", "compel"]),
    ({"prompt": "a cat++ (dog)1.2", "syntax": "compel", "normalize": "openclip"},
     ["--syntax", "compel", "--normalize", "openclip"]),
    ({"prompt": "(red:1.2) fox, embedding:style", "preset": "comfy", "family": "sdxl", "embedding_names": {"style": 2}},
     ["--preset", "comfy", "--family", "sdxl", "--embedding-name", "style:2"]),
    ({"prompt": LONG, "layout": "compress", "max_rows": 1}, ["--layout", "compress", "--max-rows", "1"]),
    ({"prompt": "a fox, mystyle AND a dog:0.5", "embedding_names": {"mystyle": 3}}, ["--embedding-name", "mystyle:3"]),
    ({"prompt": "café 森林 🦊, (déjà vu:0.8)", "family": "sd2", "comma_backtrack": 5},
     ["--family", "sd2", "--comma-backtrack", "5"]),
]


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(), base_url=LOCAL) as c:
        yield c


def described(text: str, preset: str = "a1111", family: str = "sd1", normalize: str = "hf-slow") -> dict:
    """describe() as it reads after a trip through JSON (tuples become lists)."""
    obj = describe(text, Options.preset(preset), get_family(family), Tokenizer.default(normalize))
    return json.loads(json.dumps(obj))


def cli_json(capsys, body: dict, flags: list[str]) -> dict:
    assert main(["inspect", body["prompt"], *flags, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("body,flags", CASES, ids=range(len(CASES)))
def test_inspect_is_the_cli_object(client, capsys, body, flags):
    r = client.post("/api/inspect", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == cli_json(capsys, body, flags)


@pytest.mark.parametrize("case", [0, 3])
def test_inspect_matches_cli_subprocess(client, case):
    body, flags = CASES[case]
    out = subprocess.run([sys.executable, "-m", "sdclip", "inspect", body["prompt"], *flags, "--json"],
                         capture_output=True, text=True, check=True, encoding="utf-8").stdout
    assert client.post("/api/inspect", json=body).json() == json.loads(out)


def view(client, **body) -> dict:
    r = client.post("/api/view", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def tokens_of(v: dict, part: int = 0) -> list[dict]:
    return [s for row in v["view"]["parts"][part]["rows"] for s in row["slots"] if s["kind"] in ("token", "vector")]


def test_view_inspect_is_describe_and_tokens_read_as_typed(client):
    text = "café 森林 🦊 (misty:1.3), naïve"
    v = view(client, prompt=text)
    assert v["inspect"] == described(text)
    toks = tokens_of(v)
    shown = [s["t"] for s in toks if not s["cont"]]
    assert "".join(shown) == "café森林🦊misty,naïve"
    assert {"森", "林", "🦊", "café", "ï"} <= set(shown)  # whole characters, never byte symbols like "æ£®"
    assert all(s["t"] == "" for s in toks if s["cont"])
    misty = next(s for s in toks if s["t"] == "misty")
    assert misty["w"] == pytest.approx(1.3) and text[slice(*misty["span"])] == "misty"
    row = v["view"]["parts"][0]["rows"][0]
    assert row["slots"][0]["kind"] == "bos" and row["slots"][-1]["kind"] == "eos"
    assert row["count"] == v["inspect"]["tokens"] and row["pad"] == 77 - len(row["slots"])
    # ids and weights of the view are the inspect rows' own
    assert [s["id"] for s in row["slots"]] == v["inspect"]["rows"][0]["ids"][: len(row["slots"])]


def test_view_break_and_parts_and_embeddings(client):
    v = view(client, prompt="a fox, mystyle BREAK a forest AND a dog:0.5", embedding_names={"mystyle": 2})
    parts = v["view"]["parts"]
    assert v["view"]["combine"] == "and" and [p["weight"] for p in parts] == [1.0, 0.5]
    assert [r["break_before"] for r in parts[0]["rows"]] == [False, True]
    vec = [s for s in tokens_of(v) if s["kind"] == "vector"]
    assert [(s["name"], s["vector"]) for s in vec] == [("mystyle", 0), ("mystyle", 1)]
    assert v["view"]["embeddings"] == [{"part": 0, "name": "mystyle", "vectors": 2, "span": [7, 14], "text": "mystyle"}]


def test_view_window_overlap_and_dropped(client):
    v = view(client, prompt=LONG, layout="window", stride=40)
    rows = v["view"]["parts"][0]["rows"]
    assert len(rows) > 1 and rows[1]["overlap"] > 0
    struck = [s for s in rows[1]["slots"] if not s["keep"] and s["kind"] == "token"]
    assert len(struck) == rows[1]["overlap"] and all(s["keep"] for s in rows[0]["slots"] if s["kind"] == "token")

    t = view(client, prompt=LONG, layout="truncate")
    assert t["inspect"]["dropped"]
    marked = [s["t"] for s in t["view"]["source"] if s["dropped"]]
    assert len(marked) == 1 and LONG.removesuffix(":1.2)").endswith(marked[0])  # one run: all text after the cut
    plain = lambda x: "".join(c for c in x if c.isalnum())  # noqa: E731
    assert plain(marked[0]) == plain(t["inspect"]["dropped"])
    assert "".join(s["t"] for s in t["view"]["source"]) == LONG


@pytest.mark.parametrize("step", [1, 4, 5, 6, 10])
def test_view_step_is_the_schedule(client, step):
    text = "a [cat:dog:0.5] in [red|blue] light"
    v = view(client, prompt=text, steps=10, step=step)
    want = schedule(text, 10).at(step)
    assert v["view"]["scheduled"] and v["view"]["text"] == want
    assert {k: x for k, x in v["inspect"].items() if k != "schedule"} == described(want)
    assert v["inspect"]["schedule"]["text"] == want
    assert [e["text"] for e in v["view"]["schedule"]] == [schedule(text, 10).at(k) for k in range(1, 11)]


def test_tokenize(client):
    tok = Tokenizer.default("openclip")
    assert client.post("/api/tokenize", json={"text": "a red fox"}).json() == {"ids": tok.encode("a red fox")}
    lines = ["a red fox", "森林", ""]
    r = client.post("/api/tokenize", json={"lines": lines, "normalize": "hf-fast"})
    assert r.json() == {"ids": [Tokenizer.default("hf-fast").encode(x) for x in lines]}
    assert client.post("/api/tokenize", json={"text": "a", "lines": ["b"]}).status_code == 400


@pytest.mark.parametrize(
    "body,position,fragment",
    [
        ({"prompt": "a (red:1000) fox"}, 2, "weight 1000"),
        ({"prompt": "a (b:1.2.3) c"}, 5, "not a number"),
        ({"prompt": "(red:1000) fox", "preset": "comfy"}, 1, "weight"),
        ({"prompt": "x", "layout": "long"}, None, "Long-CLIP"),
        ({"prompt": "x", "syntax": "nope"}, None, "unknown syntax"),
        ({"prompt": "x", "stride": "5"}, None, "stride"),
        ({"prompt": "x", "stride": True}, None, "stride"),
        ({"prompt": 3}, None, "'prompt' must be a str"),
        ({}, None, "missing"),
        ({"prompt": "x", "model": "/etc/passwd"}, None, "unknown field"),
        ({"prompt": "x", "embedding_names": {"a": 0}}, None, "vectors"),
        ({"prompt": "x", "embedding_names": ["a:1"]}, None, "embedding_names"),
    ],
)
def test_bad_input_is_400_with_position(client, body, position, fragment):
    for path in ("/api/inspect", "/api/view"):
        r = client.post(path, json=body)
        assert r.status_code == 400, r.text
        got = r.json()
        assert set(got) == {"error", "position"} and got["position"] == position
        assert fragment in got["error"] and "\n" not in got["error"]


def test_bad_bodies(client):
    assert client.post("/api/inspect", content=b"{not json").status_code == 400
    assert client.post("/api/inspect", json=["a list"]).json()["error"].startswith("the request body must be")
    assert client.post("/api/view", json={"prompt": "x", "steps": 5, "step": 6}).status_code == 400
    big = {"prompt": "a " * 600_000}
    r = client.post("/api/inspect", json=big)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert client.get("/api/nothing").status_code == 404
    assert client.get("/api/inspect").json() == {"error": "Method Not Allowed", "position": None}


def test_time_limit_is_503(monkeypatch):
    import sdclip.serve.api as api

    def slow(*args, **kwargs):
        time.sleep(0.5)
        return {}

    monkeypatch.setattr(api, "inspect_object", slow)
    with TestClient(create_app(time_limit=0.05), base_url=LOCAL) as c:  # a long prompt goes to the worker pool
        r = c.post("/api/inspect", json={"prompt": "x" * 3000})
    assert r.status_code == 503 and "0.05 s limit" in r.json()["error"] and r.headers["retry-after"] == "1"
    with TestClient(create_app(time_limit=0.05, inline_chars=0), base_url=LOCAL) as c:
        r = c.post("/api/inspect", json={"prompt": "x"})
    assert r.status_code == 503 and "0.05 s limit" in r.json()["error"] and r.headers["retry-after"] == "1"


def test_cors_only_when_asked():
    origin = {"Origin": "http://example.test"}
    with TestClient(create_app(), base_url=LOCAL) as c:
        r = c.post("/api/inspect", json={"prompt": "x"}, headers=origin)
        assert "access-control-allow-origin" not in r.headers
    with TestClient(create_app(cors="http://example.test"), base_url=LOCAL) as c:
        r = c.post("/api/inspect", json={"prompt": "x"}, headers=origin)
        assert r.headers["access-control-allow-origin"] == "http://example.test"
        other = c.post("/api/inspect", json={"prompt": "x"}, headers={"Origin": "http://evil.test"})
        assert "access-control-allow-origin" not in other.headers


def test_page_and_assets_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    for testid in ("prompt", "negative", "syntax", "family", "layout"):
        assert f'data-testid="{testid}"' in page.text
    assert "http" not in page.text.replace('href="/openapi.json"', "").split("<body>")[0].replace("http-equiv", "")
    for asset in ("app.js", "style.css"):
        r = client.get(f"/static/{asset}")
        assert r.status_code == 200 and "https://" not in r.text and "http://" not in r.text


def test_openapi_paths_are_served(client):
    spec = client.get("/openapi.json").json()
    assert spec == SPEC and spec["openapi"].startswith("3.")
    app_routes = {r.path for r in client.app.routes if getattr(r, "methods", None)}
    assert set(spec["paths"]) == app_routes - {"/"}
    for path, methods in spec["paths"].items():
        for method in methods:
            r = client.request(method.upper(), path, json={})
            assert r.status_code not in (404, 405) or path == "/api/encode", (method, path, r.status_code)


def test_encode_without_model_is_404(client):
    r = client.post("/api/encode", json={"prompt": "a"})
    assert r.status_code == 404 and "--model" in r.json()["error"]


# -- with a model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from tiny_models import tiny_family, write_layout

    return write_layout("single.safetensors", tiny_family("sd1"), tmp_path_factory.mktemp("sd1"))


@pytest.fixture(scope="module")
def cond(model_path):
    from sdclip.conditioner import Conditioner

    return Conditioner.from_pretrained(model_path, "a1111")


@pytest.fixture(scope="module")
def model_client(cond):
    with TestClient(create_app(cond, token="s3cret")) as c:
        yield c


AUTH = {"Authorization": "Bearer s3cret"}


def test_encode_safetensors_is_diffusers_kwargs(model_client, cond):
    import torch
    from safetensors.torch import load

    body = {"prompt": f"a (red:1.3) fox, {LONG}", "negative": "blurry"}
    r = model_client.post("/api/encode", json=body, headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    got = load(r.content)
    want = cond(body["prompt"], body["negative"]).diffusers_kwargs()
    assert set(got) == set(want) == {"prompt_embeds", "negative_prompt_embeds"}
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


def test_encode_json_summary(model_client, cond):
    r = model_client.post("/api/encode?format=json", json={"prompt": ["a fox", LONG]}, headers=AUTH)
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["family"] == "sd1" and s["tensors"]["prompt_embeds"]["shape"][0] == 2
    assert s["tensors"]["prompt_embeds"]["shape"] == s["tensors"]["negative_prompt_embeds"]["shape"]
    assert s["tokens"]["prompt"] == [cond.prepare("a fox").token_count, cond.prepare(LONG).token_count]
    assert s["tokens"]["negative"] == [0, 0] and s["dropped"]["prompt"] == ["", ""]


def test_encode_auth_and_errors(model_client):
    assert model_client.post("/api/encode", json={"prompt": "a"}).status_code == 401
    wrong = model_client.post("/api/encode", json={"prompt": "a"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    r = model_client.post("/api/encode", json={"prompt": "a AND b"}, headers=AUTH)
    assert r.status_code == 400 and "AND" in r.json()["error"]
    r = model_client.post("/api/encode", json={"prompt": "a (b:1000)"}, headers=AUTH)
    assert r.status_code == 400 and r.json()["position"] == 2
    assert model_client.post("/api/encode", json={"prompt": "a", "model": "x.ckpt"}, headers=AUTH).status_code == 400
    assert model_client.post("/api/encode?format=npz", json={"prompt": "a"}, headers=AUTH).status_code == 400
    assert model_client.get("/api/info").json()["model"] is True


# -- no torch, the command line ---------------------------------------------------------------------


def test_no_torch_without_a_model():
    code = (
        "import sys\n"
        "from starlette.testclient import TestClient\n"
        "from sdclip.cli.main import build_parser\n"
        "from sdclip.serve import create_app\n"
        "build_parser()\n"
        "with TestClient(create_app(), base_url='http://localhost') as c:\n"
        "    assert c.post('/api/view', json={'prompt': 'a (fox:1.2)'}).status_code == 200\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_prints_url_and_warns_when_bound_wide(monkeypatch, capsys):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: seen.setdefault("sockets", sockets))
    assert main(["serve", "--port", "0"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("sdclip serve: http://127.0.0.1:") and "warning" not in err
    # a TCP-proto socket: asyncio sets TCP_NODELAY only on those (else each answer waits ~40 ms for an ACK)
    assert seen["sockets"][0].proto == socket.IPPROTO_TCP
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 0
    out, err = capsys.readouterr()
    assert "http://127.0.0.1:" in out and "warning: listening on 0.0.0.0" in err
    assert main(["serve", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_cli_loads_the_model_once_and_guards_encode(monkeypatch, capsys, model_path, cond):
    import uvicorn
    from safetensors.torch import load

    apps = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: apps.append(self.config.app))
    assert main(["serve", "--port", "0", "--model", str(model_path), "--token", "t0k", "--cors", "http://a.test"]) == 0
    assert f"model {model_path}" in capsys.readouterr().out
    with TestClient(apps[0], base_url=LOCAL) as c:
        assert c.post("/api/encode", json={"prompt": "a fox"}).status_code == 401
        r = c.post("/api/encode", json={"prompt": "a fox"}, headers={"Authorization": "Bearer t0k"})
        assert r.status_code == 200
        want = cond("a fox").diffusers_kwargs()["prompt_embeds"]
        assert load(r.content)["prompt_embeds"].equal(want)
