"""The page of `sdclip serve` in a real headless Chromium (Debian's `chromium`, driven by playwright).

A uvicorn server runs in a background thread on a free loopback port; the browser types prompts and the
test checks what the page shows against `sdclip inspect --json` (the CLI in-process): the counter, the
rows and their tokens (as typed, weight on hover), the error view with its caret, the layout selector and
the step slider of scheduled prompts.

`python tests/serve/test_serve_browser.py --screenshot docs/serve.png` saves the README's screenshot.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]
TIMEOUT_MS = 10_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                "(apt-get install chromium; .ci/run installs it)")


@contextmanager
def running_server(app=None) -> Iterator[str]:  # noqa: ANN001
    """uvicorn serving `app` (default: no model) on a free loopback port, in a daemon thread."""
    import uvicorn

    from sdclip.serve import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP proto: asyncio sets NODELAY
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app or create_app(), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


@contextmanager
def browser_page(url: str, width: int = 1200, height: int = 800):  # noqa: ANN201
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(TIMEOUT_MS)
            page.console_errors = []  # CSP violations and script errors land here
            page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
            page.on("pageerror", lambda e: page.console_errors.append(str(e)))
            # nothing may be fetched from anywhere but this server (no CDN)
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url)
                       else route.abort())
            page.goto(url)
            page.wait_for_selector("body[data-ready]")
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page():
    with running_server() as url, browser_page(url) as p:
        yield p


def cli(capsys, text: str, *flags: str) -> dict:
    from sdclip.cli.main import main

    capsys.readouterr()
    assert main(["inspect", text, *flags, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def type_prompt(page, text: str, box: str = "prompt") -> None:  # noqa: ANN001
    """Replace a box's text as typing would (input events), and wait for the page to redraw."""
    before = page.evaluate("document.body.dataset.ready")
    page.fill(f"[data-testid={box}]", text)
    page.wait_for_function("b => document.body.dataset.ready !== b", arg=before)


def prompt_view(page):  # noqa: ANN001, ANN201
    return page.locator("[data-testid=prompt-view]")


def test_counter_rows_and_tokens_match_the_cli(page, capsys):
    text = "a (red:1.3) fox in a [misty] forest, café 森林 🦊, BREAK golden hour light"
    type_prompt(page, text)
    want = cli(capsys, text)
    view = prompt_view(page)
    assert view.get_by_test_id("token-count").inner_text() == f"{want['tokens']}/{want['capacity']}"
    rows = view.get_by_test_id("row")
    assert rows.count() == len(want["rows"]) == 2
    assert view.get_by_test_id("break").count() == 1
    tokens = view.get_by_test_id("token")
    ids = [int(x) for x in tokens.evaluate_all("els => els.map(e => e.dataset.id)")]
    from sdclip.tokenizer.stream import BOS, EOS

    want_ids = [i for row in want["rows"] for i in row["ids"][1:] if i not in (BOS, EOS)]
    assert ids == want_ids
    labels = tokens.all_inner_texts()
    for word in ("red", "fox", "misty", "café", "森", "林", "🦊", "golden"):
        assert word in labels, word
    red = tokens.nth(labels.index("red"))
    assert red.get_attribute("title").startswith("weight 1.3 ")
    colour = "e => getComputedStyle(e).backgroundColor"
    assert red.evaluate(colour) != tokens.nth(labels.index("fox")).evaluate(colour)  # coloured by weight
    misty = tokens.nth(labels.index("misty"))
    assert misty.get_attribute("title").startswith("weight 0.9091 ")
    # the per-row counter, A1111 style
    first = cli(capsys, text.split("BREAK")[0])
    assert rows.nth(0).get_by_test_id("row-count").inner_text() == f"1 · {first['tokens']}/75"


def test_long_prompt_layout_selector_and_dropped(page, capsys):
    text = ", ".join(f"a {c} fox with {c} eyes" for c in ("red", "blue", "green", "golden", "silver", "purple",
                                                           "orange", "white", "black", "pink", "grey", "teal"))
    type_prompt(page, text)
    want = cli(capsys, text)
    view = prompt_view(page)
    assert view.get_by_test_id("token-count").inner_text() == f"{want['tokens']}/{want['capacity']}"
    assert want["capacity"] == 150 and view.get_by_test_id("row").count() == 2
    before = page.evaluate("document.body.dataset.ready")
    page.select_option("[data-testid=layout]", "truncate")
    page.wait_for_function("b => document.body.dataset.ready !== b", arg=before)
    want = cli(capsys, text, "--layout", "truncate")
    assert want["dropped"] and view.get_by_test_id("row").count() == 1
    assert view.get_by_test_id("token-count").inner_text() == f"{want['tokens']}/{want['capacity']}"
    assert "over" in view.get_by_test_id("token-count").get_attribute("class")
    assert view.get_by_test_id("dropped-text").inner_text() == f"dropped: {want['dropped']}"
    assert "teal" in view.get_by_test_id("dropped").all_inner_texts()[-1]
    before = page.evaluate("document.body.dataset.ready")
    page.select_option("[data-testid=layout]", "")
    page.wait_for_function("b => document.body.dataset.ready !== b", arg=before)


def test_error_view_caret_and_recovery(page, capsys):
    text = "a fox, (red:1000) sky"
    type_prompt(page, text)
    error = prompt_view(page).get_by_test_id("error")
    assert "weight 1000" in error.get_by_test_id("error-message").inner_text()
    line, caret = error.get_by_test_id("caret").inner_text().split("\n")
    assert line == text and caret == " " * text.index("(") + "^"
    assert prompt_view(page).get_by_test_id("row").count() == 0
    # the page keeps working: fix the prompt
    type_prompt(page, "a fox, (red:10) sky")
    want = cli(capsys, "a fox, (red:10) sky")
    assert prompt_view(page).get_by_test_id("error").count() == 0
    assert prompt_view(page).get_by_test_id("token-count").inner_text() == f"{want['tokens']}/{want['capacity']}"


def test_step_slider_shows_the_text_in_force(page, capsys):
    from sdclip.syntax import schedule

    text = "a [cat:dog:0.5] in [red|blue] light"
    type_prompt(page, text)
    assert page.get_by_test_id("schedule").is_visible()
    steps = schedule(text, 20)
    assert page.get_by_test_id("step-text").inner_text() == steps.at(1)
    for k in (2, 11, 20):
        before = page.evaluate("document.body.dataset.ready")
        page.get_by_test_id("step").fill(str(k))
        page.wait_for_function("b => document.body.dataset.ready !== b", arg=before)
        assert page.get_by_test_id("step-text").inner_text() == steps.at(k)
        want = cli(capsys, steps.at(k))
        labels = prompt_view(page).get_by_test_id("token").all_inner_texts()
        assert prompt_view(page).get_by_test_id("token-count").inner_text() == f"{want['tokens']}/{want['capacity']}"
        assert ("dog" in labels) == (k > 10) and ("blue" in labels) == (k % 2 == 0)
    type_prompt(page, "no schedule here")
    assert not page.get_by_test_id("schedule").is_visible()


def test_embedding_references(page, capsys):
    text = "a fox, mystyle, forest"
    page.fill("[data-testid=embedding-names]", "mystyle:3")
    type_prompt(page, text)
    want = cli(capsys, text, "--embedding-name", "mystyle:3")
    view = prompt_view(page)
    assert view.get_by_test_id("token-count").inner_text() == f"{want['tokens']}/{want['capacity']}"
    vectors = view.locator("[data-testid=token].vector")
    assert vectors.count() == 3 and vectors.nth(0).inner_text() == "mystyle"
    assert "mystyle: 3 vector(s)" in view.get_by_test_id("embedding").inner_text()
    page.fill("[data-testid=embedding-names]", "")


def test_negative_box_and_and_parts(page, capsys):
    type_prompt(page, "a fox AND a dog:0.5")
    type_prompt(page, "blurry, lowres", box="negative")
    want = cli(capsys, "blurry, lowres")
    neg = page.locator("[data-testid=negative-view]")
    assert neg.get_by_test_id("token-count").inner_text() == f"{want['tokens']}/{want['capacity']}"
    heads = prompt_view(page).get_by_test_id("part-head").all_inner_texts()
    assert len(heads) == 2 and "AND weight 0.5" in heads[1]


def test_no_script_errors(page):
    """Runs last: nothing the tests typed (errors included) broke a script or hit the page's CSP."""
    expected = "Failed to load resource: the server responded with a status of 400"  # the bad prompts' answers
    assert [m for m in page.console_errors if not m.startswith(expected)] == []


def screenshot(out: Path) -> None:
    """The README's picture: an example prompt with weights, BREAK, a schedule and a negative."""
    with running_server() as url, browser_page(url, 1100, 760) as p:
        type_prompt(p, "a (red:1.3) fox in a [misty] forest, café 森林 🦊, [summer:winter:0.5] light, "
                       "highly detailed BREAK golden hour, (soft focus:0.8)")
        type_prompt(p, "blurry, lowres, (watermark:1.2)", box="negative")
        p.get_by_test_id("step").fill("12")
        p.wait_for_timeout(600)
        tmp = out.with_suffix(".tmp.png")
        p.screenshot(path=str(tmp), full_page=True)
        tmp.replace(out)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--screenshot":
        sys.exit("usage: python tests/serve/test_serve_browser.py --screenshot docs/serve.png")
    screenshot(Path(sys.argv[2]))
