"""`sdclip serve`: the inspector as a live web page and a JSON API (see sdclip.serve).

Contract (keep it stable): `sdclip serve [--host 127.0.0.1] [--port 7861] [--model PATH] [--open]` prints the
URL and serves until interrupted. Without --model no torch is imported; with it, /api/encode is enabled
(and guarded by `--token` when one is given). The text flags set the model's options; the page chooses
its own per request. The page's family defaults to the model's (or --family); SD3 / Flux tokenize with
the model's T5 tokenizer, or `--t5-tokenizer DIR` without a model; Qwen-Image / Z-Image / Lumina 2 with the
model's LLM tokenizer and chat template, or `--llm-tokenizer DIR` without a model. Without --token only requests whose
Host is this machine (or --allow-host NAME) are answered: a DNS-rebinding page cannot reach the API.
"""

from __future__ import annotations

import argparse
import sys

from sdclip.cli.options import add_model_options, add_text_options, finite_float, whole_number

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7861
BODY_TIMEOUT = 15.0  #: sdclip.serve.limits.BODY_TIMEOUT (not imported: the CLI's parser stays starlette-free)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="a live token page and a JSON API in the browser (no model needed)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=whole_number, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free port)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.add_argument("--cors", metavar="ORIGIN", help="allow cross-origin requests from ORIGIN (default: none)")
    p.add_argument("--token", help="bearer token that /api/encode requires (default: none)")
    p.add_argument("--time-limit", type=finite_float, default=10.0, help="seconds one request may work (default 10)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host is NAME (repeatable; '*': any). Without --token only "
                        "localhost, 127.0.0.1, [::1] and --host are answered (a guard against DNS rebinding)")
    p.add_argument("--body-timeout", type=finite_float, default=BODY_TIMEOUT,
                   help=f"seconds a request's headers, and then its body, may take to arrive (default {BODY_TIMEOUT:g})")
    p.add_argument("--t5-tokenizer", metavar="DIR",
                   help="T5 families (SD3, Flux, Chroma, Wan, …) on the page without --model: the model's T5 tokenizer (its folder with "
                        "tokenizer.json or spiece.model, or the diffusers model folder holding tokenizer_3/ or "
                        "tokenizer_2/); with --model the model's own is used")
    p.add_argument("--llm-tokenizer", metavar="DIR",
                   help="qwen-image / z-image / lumina2 on the page without --model: the model's tokenizer (its tokenizer/ "
                        "folder, or the diffusers model folder holding it; needs the llm extra); with --model the "
                        "model's own is used")
    add_model_options(p, model_required=False, per_encoder_prompts=False)
    add_text_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import socket

    from sdclip.serve.app import create_app
    from sdclip.serve.limits import LOOPBACK_HOSTS, is_loopback
    from sdclip.serve.server import make_server

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be within 0..65535, got {args.port}")
    if args.time_limit <= 0:
        raise ValueError("--time-limit must be > 0")
    if args.body_timeout <= 0:
        raise ValueError("--body-timeout must be > 0")
    if args.token is not None and not args.token.strip():
        raise ValueError("--token must not be empty")
    if args.model and args.t5_tokenizer:
        raise ValueError("--t5-tokenizer is for a page without --model: with a model its own T5 tokenizer is used")
    if args.model and args.llm_tokenizer:
        raise ValueError("--llm-tokenizer is for a page without --model: with a model its own tokenizer is used")
    if any(not h.strip() for h in args.allow_host):
        raise ValueError("--allow-host must name a host")
    from sdclip.encoder.loading.hub import check_source

    check_source(args.model)
    t5 = _t5_tokenizer(args.t5_tokenizer) if args.t5_tokenizer else None
    llm = _llm_tokenizer(args.llm_tokenizer) if args.llm_tokenizer else None
    conditioner = _load(args) if args.model else None
    if not is_loopback(args.host):
        print(
            f"sdclip: warning: listening on {args.host}, reachable from other machines; the API has no "
            "authentication except --token for /api/encode"
            + ("" if args.token or args.allow_host else
               "; without --token only requests naming this machine as localhost or by --host's address are "
               "answered (--allow-host NAME adds the names clients use)"),
            file=sys.stderr,
        )
    hosts = (*LOOPBACK_HOSTS, args.host, *args.allow_host)
    app = create_app(conditioner, token=args.token, cors=args.cors, time_limit=args.time_limit, t5_tokenizer=t5,
                     family=args.family, allowed_hosts=hosts, body_timeout=args.body_timeout, llm_tokenizer=llm)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    # proto named explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto is TCP, and
    # with Nagle on every answer waits ~40 ms for a delayed ACK (measured: 48 ms for GET /api/info)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        sock.listen(2048)  # listening before the URL is printed: a client that reads it can connect at once
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    port = sock.getsockname()[1]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(args.host, args.host)  # a wildcard: show where to browse
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    what = f"model {args.model}" if args.model else "no model: inspect and tokenize only"
    print(f"sdclip serve: {url}  ({what}; Ctrl-C to stop)", flush=True)
    if args.open:
        import threading
        import webbrowser

        threading.Timer(0.5, webbrowser.open, (url,)).start()
    server = make_server(app, header_timeout=args.body_timeout)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn has shut down cleanly and re-raises the signal: no traceback for Ctrl-C
        pass
    finally:
        sock.close()
    return 0


def _t5_tokenizer(path: str):  # noqa: ANN202
    """`--t5-tokenizer DIR` read once, as `sdclip inspect --t5-tokenizer` reads it (one line if unreadable)."""
    from sdclip.cli.inspect import t5_tokenizer_of
    from sdclip.conventions.family import get_family

    return t5_tokenizer_of(path, get_family("flux"))


def _llm_tokenizer(path: str):  # noqa: ANN202
    """`--llm-tokenizer DIR` read once, as `sdclip inspect --llm-tokenizer` reads it (one line if unreadable)."""
    from sdclip.cli.inspect import tokenizer_folder
    from sdclip.conventions.family import FAMILIES
    from sdclip.lanes import needs_tokenizer
    from sdclip.tokenizer.llm import llm_tokenizer_of

    return llm_tokenizer_of(tokenizer_folder("--llm-tokenizer", path), next(f for f in FAMILIES.values() if needs_tokenizer(f, "llm_tokenizer")))


def _load(args: argparse.Namespace):  # noqa: ANN202 (torch stays out of the CLI's import)
    """The model's Conditioner, once, as `sdclip encode` builds it from the same flags."""
    import torch

    from sdclip.cli.options import model_options
    from sdclip.conditioner import Conditioner
    from sdclip.encoder.device import resolve_device

    options = model_options(args)  # checked before anything loads
    args.device = resolve_device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    return Conditioner.from_pretrained(
        args.model, family=args.family, dtype=dtype, device=args.device, embeddings=args.embeddings,
        options=options, pack_weights=args.pack_weights, row_limit=args.row_limit,
    )
