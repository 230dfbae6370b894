"""The server counts as `sdclip inspect` does, for every family:

- /api/inspect and `sdclip inspect --json` agree on a scheduled prompt (`[a:b:0.5]`): A1111's counter is the largest
  part of *any* scheduled text, whichever step is shown, so the API hands the schedule's texts to the counter as the
  CLI does (it counted only the text in force at the step);
- /api/view's AND parts count with the family's own counter (the page's part headers): a T5-only or LLM family's
  n / max_sequence_length, as the inspect object's parts and the whole-prompt header, never CLIP's n/75.

T5 families read the tests' T5 tokenizer, the LLM families tests/tiny_llm.py's tokenizers (saved alone: no model
is needed to count)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from sdclip.conventions.family import FAMILIES, get_family
from sdclip.lanes import needs_tokenizer
from test_serve_models import LOCAL, cli_inspect, serve_app
from tiny_pipelines import t5_tokenizer_dir

#: short at step 1, long from step 6 of 10: the counter must see the long text while step 1 is shown
SCHEDULED = "a [cat:fox in a very long misty green forest at golden hour, highly detailed, soft light:0.5] AND a dog"
LLM = tuple(name for name, fam in FAMILIES.items() if needs_tokenizer(fam, "llm_tokenizer"))


@pytest.fixture(scope="module")
def llm_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("transformers")
    from tiny_llm import tiny_tokenizer

    root = tmp_path_factory.mktemp("llm-tokenizers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for family in LLM:
            tiny_tokenizer(family).save_pretrained(root / family / "tokenizer")
    return {f: root / f for f in LLM}


def _tokenizer_flags(family: str, llm_folders: dict[str, Path]) -> tuple[str, ...]:
    fam = get_family(family)
    if needs_tokenizer(fam, "llm_tokenizer"):
        return ("--llm-tokenizer", str(llm_folders[family]))
    if needs_tokenizer(fam, "t5_tokenizer"):
        return ("--t5-tokenizer", str(t5_tokenizer_dir()))
    return ()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_api_counts_a_schedule_as_the_cli(monkeypatch, capsys, request, family):
    folders = request.getfixturevalue("llm_folders") if family in LLM else {}
    flags = _tokenizer_flags(family, folders)
    app, _ = serve_app(monkeypatch, capsys, *flags, "--family", family)
    with TestClient(app, base_url=LOCAL) as c:
        for step in (1, 8):
            want = cli_inspect(capsys, SCHEDULED, "--family", family, *flags, "--steps", "10", "--step", str(step))
            got = c.post("/api/inspect", json={"prompt": SCHEDULED, "steps": 10, "step": step}).json()
            assert got == want, (family, step)
            view = c.post("/api/view", json={"prompt": SCHEDULED, "steps": 10, "step": step}).json()
            assert view["inspect"] == want
    # the prompt is a real test of the schedule: at step 1 the shown text alone counts fewer than the CLI's counter
    shown = cli_inspect(capsys, "a cat AND a dog", "--family", family, *flags)
    first = cli_inspect(capsys, SCHEDULED, "--family", family, *flags, "--steps", "10", "--step", "1")
    assert first["schedule"]["text"] == "a cat AND a dog"
    assert first["counter"]["count"] > shown["counter"]["count"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_view_parts_count_with_the_family_counter(monkeypatch, capsys, request, family):
    from sdclip.lanes import lane_of

    folders = request.getfixturevalue("llm_folders") if family in LLM else {}
    flags = _tokenizer_flags(family, folders)
    app, _ = serve_app(monkeypatch, capsys, *flags, "--family", family)
    text = "a red fox AND a very long blue cat sitting on a mat, highly detailed"
    want = cli_inspect(capsys, text, "--family", family, *flags)
    with TestClient(app, base_url=LOCAL) as c:
        view = c.post("/api/view", json={"prompt": text}).json()["view"]
    heads = [(p["tokens"], p["capacity"]) for p in view["parts"]]
    assert heads == [(p["tokens"], p["capacity"]) for p in want["parts"]] and len(heads) == 2
    role = get_family(family).roles[0]
    if lane_of(role).view == "template":  # the LLM lane: its own n / max_sequence_length, as `view.lane`
        assert heads == [(e["count"], e["limit"]) for e in want[role.name]["parts"]]
        assert view["lane"]["limit"] == heads[0][1] > 75
    if lane_of(role).view != "rows":  # T5-only and LLM families: never CLIP's 75, nor CLIP rows (as the CLI draws)
        assert all(cap == want["counter"]["capacity"] > 75 for _, cap in heads)
        assert all(p["rows"] == [] for p in view["parts"])
    else:
        assert all(p["rows"] for p in view["parts"])


def test_page_t5_only_family_counts_its_t5_sequence(capsys):
    """Wan on the page (headless Chromium): no CLIP rows, each AND part's header and T5 line n / 512, as
    `sdclip inspect --family wan` counts each part; the whole-prompt header the inspect object's tokens / capacity."""
    from test_serve_browser import CHROMIUM, chromium, open_page, running_server, type_prompt

    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    from sdclip.serve import create_app
    from sdclip.tokenizer.t5 import T5Tokenizer

    text = "a red fox AND a very long blue cat sitting on a mat:0.5"
    t5 = T5Tokenizer.from_folder(t5_tokenizer_dir())
    with running_server(create_app(t5_tokenizer=t5, family="wan")) as url, chromium() as browser, \
            open_page(browser, url) as page:
        type_prompt(page, text)
        want = cli_inspect(capsys, text, "--family", "wan", "--t5-tokenizer", str(t5_tokenizer_dir()))
        view = page.locator("[data-testid=prompt-view]")
        assert view.get_by_test_id("token-count").inner_text() == f"{want['tokens']}/{want['capacity']}"
        assert "row(s) of 75" not in view.get_by_test_id("token-count").get_attribute("title")
        heads = view.get_by_test_id("part-head").all_inner_texts()
        assert [h.rsplit(" · ", 1)[1] for h in heads] == [f"{p['tokens']}/{p['capacity']}" for p in want["parts"]]
        assert all(p["capacity"] == 512 for p in want["parts"]) and len(heads) == 2
        assert view.get_by_test_id("row").count() == 0  # no CLIP rows
        lines = view.get_by_test_id("t5-count").all_inner_texts()
        assert lines == [f"T5 · {p['t5']['count']}/512" for p in want["parts"]]
        assert page.console_errors == []
