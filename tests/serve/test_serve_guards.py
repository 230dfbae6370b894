"""`sdclip serve` under hostile requests: malformed fields, slow senders, foreign Host headers.

- every malformed field is a 400 naming the field, in bounded time (a 5,000-digit integer, NaN / 1e400,
  wrong types, JSON nested 5,000 deep, a lone surrogate), never a 500;
- a real uvicorn (sdclip.serve.server.make_server) on 127.0.0.1 with a short timeout closes connections
  whose headers or body never finish (real sockets), and still answers normal clients;
- without --token only loopback names (and --allow-host) are answered: a DNS-rebinding Host is a 403;
- /api/inspect is `sdclip inspect --json`'s object for a scheduled prompt too (its `schedule` entry).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from starlette.testclient import TestClient

from sdclip.cli.main import main
from sdclip.serve import create_app
from sdclip.serve.server import make_server

LOCAL = "http://localhost"
HUGE = "9" * 5000


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(), base_url=LOCAL, raise_server_exceptions=False) as c:
        yield c


def post_raw(client, path: str, raw: bytes):  # noqa: ANN001, ANN201
    return client.post(path, content=raw, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    "raw, field",
    [
        (b'{"prompt": "x", "stride": ' + HUGE.encode() + b"}", "'stride'"),
        (b'{"prompt": "x", "steps": -' + HUGE.encode() + b"}", "'steps'"),
        (b'{"prompt": "x", "max_rows": NaN}', "'max_rows'"),
        (b'{"prompt": "x", "comma_backtrack": Infinity}', "'comma_backtrack'"),
        (b'{"prompt": "x", "step": 1e400}', "'step'"),
        (b'{"prompt": "x", "stride": 2.5}', "'stride'"),
        (b'{"prompt": "x", "embedding_names": {"a": ' + HUGE.encode() + b"}}", "'embedding_names'"),
        (b'{"prompt": "x", "embedding_names": {"a": NaN}}', "'embedding_names'"),
        (b'{"prompt": ' + HUGE.encode() + b"}", "'prompt'"),
        (b'{"prompt": "x", "family": ["sd1"]}', "family"),
        (b'{"prompt": "x", "layout": {"a": 1}}', "layout"),
        (b'{"prompt": "a \\ud800 fox"}', "'prompt'"),
        (b'{"prompt": "x", "embedding_names": {"\\udfff": 1}}', "'embedding_names'"),
        (b'{"prompt": "x", "syntax": "\\ud83d"}', "'syntax'"),
        (b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested"),
        (b'{"prompt": "x", "embedding_names": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}", "nested"),
        (b"[" * 5000 + b"]" * 5000, "nested"),
        (b'{"prompt": [[[[["x"]]]]]}', "'prompt'"),
    ],
    ids=['huge-int', 'huge-negative-int', 'nan', 'infinity', '1e400', 'float-for-int', 'huge-int-in-names', 'nan-in-names', 'huge-int-prompt', 'list-for-choice', 'object-for-choice', 'surrogate-prompt', 'surrogate-key', 'surrogate-choice', 'nested-prompt', 'nested-names', 'nested-body', 'list-prompt'],
)
@pytest.mark.parametrize("path", ["/api/inspect", "/api/view"])
def test_malformed_fields_are_400_naming_the_field(client, path, raw, field):
    start = time.monotonic()
    r = post_raw(client, path, raw)
    assert time.monotonic() - start < 2
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert field in error and "\n" not in error and len(error) < 400, error


@pytest.mark.parametrize(
    "path, raw, field",
    [
        ("/api/tokenize", b'{"text": "\\ud800"}', "'text'"),
        ("/api/tokenize", b'{"lines": ["a", "\\ud800"]}', "'lines'"),
        ("/api/tokenize", b'{"text": "a", "normalize": ' + HUGE.encode() + b"}", "normalize"),
        ("/api/tokenize", b'{"lines": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested"),
        ("/api/encode", b'{"prompt": "\\ud800"}', ""),  # no model: 404 before the body is read
    ],
    ids=["surrogate-text", "surrogate-line", "huge-int-choice", "nested-lines", "encode-without-model"],
)
def test_other_endpoints(client, path, raw, field):
    r = post_raw(client, path, raw)
    if path == "/api/encode":
        assert r.status_code == 404
        return
    assert r.status_code == 400 and field in r.json()["error"], r.text


def test_a_lone_surrogate_in_the_prompt_has_its_position(client):
    r = post_raw(client, "/api/inspect", b'{"prompt": "a fox \\ud800 x"}')
    assert r.status_code == 400 and r.json()["position"] == 6 and "surrogate" in r.json()["error"]


def test_inspect_is_the_cli_object_for_a_scheduled_prompt(client, capsys):
    text = "a [cat:dog:0.5] in [red|blue] light <lora:x:1>"
    for steps, step in ((20, 1), (20, 12), (7, 7)):
        body = {"prompt": text, "steps": steps, "step": step}
        got = client.post("/api/inspect", json=body).json()
        assert main(["inspect", text, "--steps", str(steps), "--step", str(step), "--json"]) == 0
        want = json.loads(capsys.readouterr().out)
        assert got == want and "schedule" in got and got["schedule"]["step"] == step
    plain = "a fox <lora:x:1>"  # not scheduled: shown as typed, as the CLI shows it
    assert main(["inspect", plain, "--json"]) == 0
    assert client.post("/api/inspect", json={"prompt": plain}).json() == json.loads(capsys.readouterr().out)
    v = client.post("/api/view", json={"prompt": text, "steps": 20, "step": 12}).json()
    assert main(["inspect", text, "--step", "12", "--json"]) == 0
    assert v["inspect"] == json.loads(capsys.readouterr().out)


# -- the Host header -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST:7861", "127.0.0.1:1234", "[::1]:80"])
def test_loopback_hosts_are_answered(host):
    with TestClient(create_app(), base_url=f"http://{host}") as c:
        assert c.get("/api/info").status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:7861", "127.0.0.1.evil.example", "localhost.evil",
                                  "10.0.0.5"])
def test_other_hosts_are_refused_without_a_token(host):
    with TestClient(create_app(), base_url=f"http://{host}") as c:
        r = c.post("/api/inspect", json={"prompt": "a fox"})
        assert r.status_code == 403 and "--allow-host" in r.json()["error"]
        assert c.get("/").status_code == 403
    with TestClient(create_app(allowed_hosts=("localhost", host.partition(":")[0])), base_url=f"http://{host}") as c:
        assert c.post("/api/inspect", json={"prompt": "a fox"}).status_code == 200
    with TestClient(create_app(token="t"), base_url=f"http://{host}") as c:  # a token guards the API instead
        assert c.post("/api/inspect", json={"prompt": "a fox"}).status_code == 200


def test_cli_allow_host_and_bound_host(monkeypatch, capsys):
    import uvicorn

    apps = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: apps.append(self.config.app))
    assert main(["serve", "--port", "0", "--allow-host", "box.lan"]) == 0
    assert main(["serve", "--port", "0", "--allow-host", "*"]) == 0
    capsys.readouterr()
    with TestClient(apps[0], base_url="http://box.lan:7861") as c:
        assert c.get("/api/info").status_code == 200
    with TestClient(apps[0], base_url="http://rebind.example") as c:
        assert c.get("/api/info").status_code == 403
    with TestClient(apps[1], base_url="http://rebind.example") as c:
        assert c.get("/api/info").status_code == 200


# -- slow senders against a real uvicorn -----------------------------------------------------------


@contextmanager
def real_server(timeout: float) -> Iterator[int]:
    """sdclip's uvicorn (make_server) with a `timeout`-second header and body deadline, on a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = make_server(create_app(body_timeout=timeout), header_timeout=timeout)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


def closed_within(conn: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed `conn` within `seconds`, and what it sent first."""
    conn.settimeout(seconds)
    data = b""
    try:
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                return True, data
            data += chunk
    except (socket.timeout, TimeoutError):
        return False, data
    except ConnectionResetError:
        return True, data


HEADERS = (b"POST /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Content-Length: 100\r\n\r\n")


def test_slow_senders_are_cut_off_and_others_still_served():
    with real_server(timeout=0.5) as port:
        slow = []
        for k in range(30):
            conn = socket.create_connection(("127.0.0.1", port))
            if k % 3 == 0:
                conn.sendall(HEADERS + b'{"prompt": "a')  # a body that never finishes
            elif k % 3 == 1:
                conn.sendall(b"POST /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")  # half a header
            slow.append(conn)  # k % 3 == 2: connects, sends nothing
        # a normal client is answered meanwhile
        ok = socket.create_connection(("127.0.0.1", port))
        body = b'{"prompt": "a fox"}'
        ok.sendall(HEADERS.replace(b"100", str(len(body)).encode()) + body)
        ok.settimeout(5)
        assert ok.recv(4096).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        results = [closed_within(conn, 5) for conn in slow]
        assert all(closed for closed, _ in results), sum(not c for c, _ in results)
        assert time.monotonic() - start < 4  # all closed about 0.5 s after they began, not one by one
        bodies = [data for k, (_, data) in enumerate(results) if k % 3 == 0]
        assert all(d.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s" in d for d in bodies)
        for conn in (*slow, ok):
            conn.close()


def test_keep_alive_client_is_not_cut_while_it_sends_in_time():
    with real_server(timeout=1.0) as port:
        conn = socket.create_connection(("127.0.0.1", port))
        conn.settimeout(5)
        body = b'{"prompt": "a fox"}'
        request = HEADERS.replace(b"100", str(len(body)).encode()) + body
        for _ in range(3):
            for k in range(0, len(request), 40):  # trickled in, but well within the deadline
                conn.sendall(request[k:k + 40])
                time.sleep(0.02)
            reply = conn.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
        conn.close()


def test_cli_body_timeout_flag(capsys):
    assert main(["serve", "--port", "0", "--body-timeout", "0"]) == 2
    assert "--body-timeout must be > 0" in capsys.readouterr().err
