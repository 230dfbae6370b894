"""`sdclip serve` for the LLM families (Qwen-Image, Z-Image, Lumina 2), on tests/tiny_llm.py's folders:

- `serve --llm-tokenizer DIR` (no model) answers /api/inspect exactly as `sdclip inspect --llm-tokenizer DIR`, and
  /api/view draws the template + prompt: prompt tokens as typed, the template flagged, Qwen-Image's 34 dropped
  template tokens not kept, n / max_sequence_length, the weighting note;
- `serve --model <folder>`: the model's family and tokenizer; /api/encode equals `Conditioner(...)` (Z-Image's list
  stored as `sdclip encode` stores it) with the weighting warning in the answer;
- without a tokenizer one 400 line says what is missing; `--model` with `--llm-tokenizer` is refused;
- the page in a real headless Chromium: the sequence, greyed template, struck dropped tokens, the counter, the note.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

pytest.importorskip("transformers")
from starlette.testclient import TestClient  # noqa: E402

from sdclip.cli.main import main  # noqa: E402
from sdclip.serve import create_app  # noqa: E402
from test_serve_models import LOCAL, cli_inspect, serve_app  # noqa: E402
from tiny_llm import tiny_folder  # noqa: E402

FAMILIES = ("qwen-image", "z-image", "lumina2")
ROLE = {"qwen-image": "qwen25vl", "z-image": "qwen3", "lumina2": "gemma2"}
PROMPT = "a (red:1.3) fox, café"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = tmp_path_factory.mktemp("serve-llm")
        return {f: tiny_folder(root, f) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_llm_tokenizer_flag_answers_as_inspect_and_draws_the_template(monkeypatch, capsys, folders, family):
    folder = str(folders[family])
    app, printed = serve_app(monkeypatch, capsys, "--llm-tokenizer", folder, "--family", family)
    want = cli_inspect(capsys, PROMPT, "--family", family, "--llm-tokenizer", folder)
    with TestClient(app, base_url=LOCAL) as c:
        info = c.get("/api/info").json()
        assert info["family"] == family and info["llm_tokenizer"] is True and family in info["needs_llm"]
        assert c.post("/api/inspect", json={"prompt": PROMPT}).json() == want
        v = c.post("/api/view", json={"prompt": PROMPT}).json()
    assert v["inspect"] == want
    entry, view = want[ROLE[family]], v["view"]
    assert view["lane"] == {"role": ROLE[family], "count": entry["count"], "limit": entry["limit"],
                            "length": entry["length"], "dropped": ""}
    assert view["lane"]["limit"] == {"qwen-image": 1024, "z-image": 512, "lumina2": 256}[family]
    part = view["parts"][0]
    assert part["rows"] == []  # no CLIP rows drawn from LLM ids
    chips = part["lane"]["tokens"]
    assert [c["id"] for c in chips] == entry["parts"][0]["ids"]
    prompt = [c for c in chips if not c["template"]]
    assert len(prompt) == entry["count"] and all(c["kept"] for c in prompt)
    # as typed: the prompt's own characters (never a byte-level symbol), the syntax removed, one chip per token
    assert "".join(c["t"] for c in prompt).replace(" ", "") == "aredfox,café"
    red = next(c for c in prompt if c["t"].strip() == "red")
    assert red["w"] == pytest.approx(1.3) and PROMPT[red["span"][0]:red["span"][1]].strip() == "red"
    template = [c for c in chips if c["template"]]
    assert ("<Prompt Start>" if family == "lumina2" else "<|im_start|>user") in "".join(c["t"] for c in template)
    dropped = [c for c in chips if not c["kept"]]
    assert len(dropped) == (34 if family == "qwen-image" else 0) and all(c["template"] for c in dropped)
    assert any("weights do nothing" in n for n in part["notes"])


@pytest.mark.parametrize("family", FAMILIES)
def test_without_a_tokenizer_one_line_says_what_is_missing(family):
    with TestClient(create_app(), base_url=LOCAL) as c:
        info = c.get("/api/info").json()
        assert info["llm_tokenizer"] is False and set(FAMILIES) <= set(info["needs_llm"])
        for path in ("/api/inspect", "/api/view"):
            r = c.post(path, json={"prompt": "a fox", "family": family})
            assert r.status_code == 400
            error = r.json()["error"]
            assert f"family {family}" in error and "--llm-tokenizer DIR" in error and "--model" in error
            assert "tokenizer" in error and "chat template" in error and "\n" not in error


def test_llm_tokenizer_and_model_together_is_refused(capsys, folders, tmp_path):
    folder = str(folders["z-image"])
    assert main(["serve", "--port", "0", "--model", folder, "--llm-tokenizer", folder]) == 2
    assert "--llm-tokenizer is for a page without --model" in capsys.readouterr().err
    assert main(["serve", "--port", "0", "--llm-tokenizer", str(tmp_path)]) == 2  # no tokenizer there
    err = capsys.readouterr().err
    assert err.startswith("sdclip: ") and err.count("\n") == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_model_server_encodes_as_the_conditioner(monkeypatch, capsys, folders, family):
    import torch
    from safetensors.torch import load

    from sdclip.cli.encode import _padded_lists
    from sdclip.conditioner import Conditioner

    app, _ = serve_app(monkeypatch, capsys, "--model", str(folders[family]), "--preset", "a1111")
    want = cli_inspect(capsys, PROMPT, "--family", family, "--llm-tokenizer", str(folders[family]))
    body = {"prompt": [PROMPT, "a cat"], "negative": "blurry"}
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/api/info").json()["family"] == family
        assert c.post("/api/inspect", json={"prompt": PROMPT}).json() == want  # the model's own tokenizer
        r = c.post("/api/encode", json=body)
        summary = c.post("/api/encode?format=json", json=body).json()
    assert r.status_code == 200, r.text
    got = load(r.content)
    with torch.no_grad():
        kwargs = Conditioner.from_pretrained(folders[family], preset="a1111")([PROMPT, "a cat"], "blurry").diffusers_kwargs()
    expected = _padded_lists(kwargs)
    assert set(got) == set(expected) and any("mask" in k for k in got)
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, atol=1e-5, rtol=0)
    notes = json.loads(r.headers["x-sdclip-warnings"])
    assert notes == summary["warnings"] and any(n.startswith("'prompt' item 1: ") and "do nothing" in n for n in notes)
    assert not any("item 2" in n for n in notes)  # "a cat" has no weights: nothing to say


# -- the page, in a real headless Chromium ----------------------------------------------------------------------

def _page_lane(page):  # noqa: ANN001, ANN202
    view = page.locator("[data-testid=prompt-view]")
    return view, view.get_by_test_id("lane")


def test_page_draws_the_llm_sequence(folders, capsys):
    from test_serve_browser import CHROMIUM, chromium, open_page, running_server, type_prompt

    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    from sdclip.tokenizer.llm import LLMTokenizer

    tok = LLMTokenizer.from_folder(folders["qwen-image"] / "tokenizer")
    app = create_app(llm_tokenizer=tok, family="qwen-image")
    with running_server(app) as url, chromium() as browser, open_page(browser, url) as page:
        type_prompt(page, PROMPT)
        want = cli_inspect(capsys, PROMPT, "--family", "qwen-image", "--llm-tokenizer", str(folders["qwen-image"]))
        entry = want["qwen25vl"]
        view, lane = _page_lane(page)
        assert view.get_by_test_id("token-count").inner_text() == f"{entry['count']}/1024"
        assert lane.get_by_test_id("lane-count").inner_text() == f"{entry['count']}/1024"
        assert view.get_by_test_id("row").count() == 0  # no CLIP rows
        tokens = lane.get_by_test_id("token")
        assert [int(i) for i in tokens.evaluate_all("els => els.map(e => e.dataset.id)")] == [
            i for i, t in zip(entry["parts"][0]["ids"], entry["parts"][0]["template"]) if not t]
        labels = [t.strip() for t in tokens.all_inner_texts()]
        assert "red" in labels and "fox" in labels
        assert tokens.nth(labels.index("red")).get_attribute("title").startswith("weight 1.3 ")
        template = lane.get_by_test_id("template-token")
        assert template.count() == len(entry["parts"][0]["ids"]) - entry["count"]
        greyed = "e => getComputedStyle(e).color"
        assert template.first.evaluate(greyed) != tokens.first.evaluate(greyed)
        struck = lane.locator(".not-kept")
        assert struck.count() == 34
        assert "line-through" in struck.first.evaluate("e => getComputedStyle(e).textDecorationLine")
        notes = view.get_by_test_id("note").all_inner_texts()
        assert any("qwen-image: prompt weights do nothing" in n for n in notes)
        # the comfy preset: the syntax tokenized as typed, brackets and all, and said so
        before = page.evaluate("document.body.dataset.ready")
        page.select_option("[data-testid=preset]", "comfy")
        page.wait_for_function("b => document.body.dataset.ready !== b", arg=before)
        text = "".join(lane.locator("[data-testid=token]:not(.cont)").all_inner_texts())  # `+`: a character's later byte
        assert text == PROMPT
        assert any("literally" in n for n in view.get_by_test_id("note").all_inner_texts())
        # a family this server has no tokenizer for: the list says so; picked anyway, the page says what is missing
        assert "lumina2 (needs tokenizer)" not in page.locator("[data-testid=family]").inner_text()
        assert page.console_errors == []
    with running_server() as url, chromium() as browser, open_page(browser, url + "?family=lumina2") as page:
        assert "lumina2 (needs tokenizer)" in page.locator("[data-testid=family]").inner_text()
        error = page.locator("[data-testid=prompt-view]").get_by_test_id("error-message").inner_text()
        assert "family lumina2" in error and "--llm-tokenizer DIR" in error


def test_page_part_headers_count_the_lane(folders, capsys):
    """An AND prompt of an LLM family: each part's header says the lane's n / max_sequence_length (as the
    whole-prompt header does and `sdclip inspect` counts each part), never CLIP's n/75."""
    from test_serve_browser import CHROMIUM, chromium, open_page, running_server, type_prompt

    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    from sdclip.tokenizer.llm import LLMTokenizer

    text = "a (red:1.3) fox AND a very long blue cat sitting on a mat, highly detailed:0.5"
    tok = LLMTokenizer.from_folder(folders["qwen-image"] / "tokenizer")
    with running_server(create_app(llm_tokenizer=tok, family="qwen-image")) as url, chromium() as browser, \
            open_page(browser, url) as page:
        type_prompt(page, text)
        want = cli_inspect(capsys, text, "--family", "qwen-image", "--llm-tokenizer", str(folders["qwen-image"]))
        parts = want["qwen25vl"]["parts"]
        view = page.locator("[data-testid=prompt-view]")
        heads = view.get_by_test_id("part-head").all_inner_texts()
        assert len(heads) == len(parts) == 2 and "AND weight 0.5" in heads[1]
        for head, part in zip(heads, parts):
            assert head.endswith(f" · {part['count']}/1024"), head
        counts = view.get_by_test_id("lane-count").all_inner_texts()
        assert [h.rsplit(" · ", 1)[1] for h in heads] == counts
        assert page.console_errors == []
