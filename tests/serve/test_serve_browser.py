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
def chromium():  # noqa: ANN201
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def open_page(browser, url: str, width: int = 1200, height: int = 800):  # noqa: ANN001, ANN201
    """A new tab on `url`, once the page has drawn its first view."""
    page = browser.new_page(viewport={"width": width, "height": height})
    try:
        page.set_default_timeout(TIMEOUT_MS)
        page.console_errors = []  # CSP violations and script errors land here
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        # nothing may be fetched from anywhere but this server (no CDN)
        origin = url.split("?")[0]
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(origin)
                   else route.abort())
        page.goto(url)
        page.wait_for_selector("body[data-ready]")
        yield page
    finally:
        page.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def page(browser):
    with running_server() as url, open_page(browser, url) as p:
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


def test_first_open_shows_the_example_rendered(browser, capsys):
    """A first visit shows a real prompt (text in the box, not a grey placeholder) and its tokens, never 0/75."""
    with running_server() as url, open_page(browser, url) as p:
        text = p.get_by_test_id("prompt").input_value()
        assert text and "BREAK" in text
        want = cli(capsys, text)
        view = prompt_view(p)
        assert view.get_by_test_id("token-count").inner_text() == f"{want['tokens']}/{want['capacity']}" != "0/75"
        assert view.get_by_test_id("row").count() == len(want["rows"])
        negative = p.get_by_test_id("negative").input_value()
        assert negative and p.locator("[data-testid=negative-view]").get_by_test_id("token").count() > 0
        # the legend explains the chips a view shows: `+` (a character's further byte tokens) and `+N pad`
        legend = p.get_by_test_id("legend").inner_text()
        assert "+ = one more token of the character before it" in legend and "pad = padding" in legend
        assert p.console_errors == []


def test_url_shares_a_prompt_and_follows_typing(browser, capsys):
    from urllib.parse import parse_qs, quote, urlsplit

    text = "a (fox:1.2) in the snow, 🦊 BREAK night"
    with running_server() as url:
        shared = f"{url}?prompt={quote(text)}&family=sd2&layout=truncate"
        with open_page(browser, shared) as p:
            assert p.get_by_test_id("prompt").input_value() == text
            assert p.get_by_test_id("negative").input_value() == ""  # a shared prompt: no example negative
            assert p.get_by_test_id("family").input_value() == "sd2"
            want = cli(capsys, text, "--family", "sd2", "--layout", "truncate")
            assert prompt_view(p).get_by_test_id("token-count").inner_text() == f"{want['tokens']}/{want['capacity']}"
            history = p.evaluate("history.length")
            type_prompt(p, "a cat & a dog")
            query = parse_qs(urlsplit(p.url).query)
            assert query["prompt"] == ["a cat & a dog"] and query["family"] == ["sd2"]
            assert query["layout"] == ["truncate"] and p.evaluate("history.length") == history  # replaceState
            address = p.url
        with open_page(browser, address) as q:  # the address opens the same view
            assert q.get_by_test_id("prompt").input_value() == "a cat & a dog"
            assert q.get_by_test_id("layout").input_value() == "truncate"


def test_t5_families_without_a_tokenizer_say_what_is_missing(browser):
    with running_server() as url, open_page(browser, url) as p:
        labels = p.locator("[data-testid=family] option").all_inner_texts()
        assert "sd3 (needs T5)" in labels and "flux (needs T5)" in labels and "sd1" in labels
        before = p.evaluate("document.body.dataset.ready")
        p.select_option("[data-testid=family]", "flux")
        p.wait_for_function("b => document.body.dataset.ready !== b", arg=before)
        message = prompt_view(p).get_by_test_id("error-message").inner_text()
        assert "family flux" in message and "--t5-tokenizer DIR" in message


def test_t5_pieces_per_part(browser, capsys):
    from sdclip.serve import create_app
    from sdclip.tokenizer.t5 import T5Tokenizer
    from tiny_pipelines import t5_tokenizer_dir

    folder = t5_tokenizer_dir()
    app = create_app(t5_tokenizer=T5Tokenizer.from_folder(folder), family="flux")
    text = "a (red:1.3) fox AND a misty forest:0.5"
    with running_server(app) as url, open_page(browser, url) as p:
        assert "flux" in p.locator("[data-testid=family] option").all_inner_texts()
        type_prompt(p, text)
        want = cli(capsys, text, "--family", "flux", "--t5-tokenizer", str(folder))
        rows = prompt_view(p).get_by_test_id("t5")
        assert rows.count() == len(want["parts"]) == 2
        for k, part in enumerate(want["parts"]):
            row = rows.nth(k)
            assert row.get_by_test_id("t5-count").inner_text() == f"T5 · {part['t5']['count']}/512"
            pieces = row.get_by_test_id("t5-piece")
            shown = [x.removeprefix("▁") or "▁" for x in part["t5"]["pieces"][:-1]]  # </s> is a special chip
            assert pieces.all_inner_texts() == shown
            ids = [int(i) for i in pieces.evaluate_all("els => els.map(e => e.dataset.id)")]
            assert ids == part["t5"]["ids"][: len(shown)]
        red = rows.nth(0).get_by_test_id("t5-piece").filter(has_text="red")
        assert red.count() >= 1 and red.first.get_attribute("title").startswith("weight 1.3 ")
        assert p.console_errors == []


def test_no_script_errors(page):
    """Runs last: nothing the tests typed (errors included) broke a script or hit the page's CSP."""
    expected = "Failed to load resource: the server responded with a status of 400"  # the bad prompts' answers
    assert [m for m in page.console_errors if not m.startswith(expected)] == []


def screenshot(out: Path) -> None:
    """The README's picture: an example prompt with weights, BREAK, a schedule and a negative."""
    with running_server() as url, chromium() as b, open_page(b, url, 1100, 760) as p:
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
