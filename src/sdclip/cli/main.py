"""The `sdclip` entry point: one module per command, each with `add_parser(sub)` setting `func`.

Commands import their heavy dependencies (torch, the web stack, Ray) inside `run`, so `inspect` and
`tokenize` start without them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import sdclip
from sdclip.syntax.prompt import PromptSyntaxError

#: optional dependencies → the extra that installs them (pip install 'sdclip[EXTRA]')
EXTRAS = {"torch": "torch", "safetensors": "torch", "huggingface_hub": "torch", "starlette": "serve",
          "uvicorn": "serve", "h11": "serve", "ray": "ray", "pyarrow": "ray", "diffusers": "attention",
          "transformers": "attention", "PIL": "attention", "numpy": "torch"}

#: what a Ctrl-C leaves, said after "sdclip: interrupted" (every output is written atomically: nothing half-written)
INTERRUPTED = {
    "embed": "; finished shards are kept: re-run the same command to resume",
    "encode": "; nothing written (an earlier --out is unchanged)",
}

#: the commands, in help order: each is the module sdclip.cli.<name>
COMMANDS = ("inspect", "tokenize", "encode", "serve", "attention", "embed")


class _Parser(argparse.ArgumentParser):
    """argparse's parser, but a bad flag value (`--family sdx`, `--steps ten`) is one line, with the nearest
    choice: the command's usage argparse prints first is 16–25 lines that push the reason off a small
    terminal, and is kept for a command line of the wrong shape (an unknown flag, a missing argument).
    Subcommand parsers are built from this class too (argparse's `add_subparsers` uses the parent's type)."""

    def error(self, message: str) -> NoReturn:
        if not message.startswith("argument "):
            super().error(message)
        self.exit(2, f"{self.prog}: error: {_nearest_choice(self, message)}\n")


def _nearest_choice(parser: argparse.ArgumentParser, message: str) -> str:
    """argparse's `invalid choice` message with the closest choice named (`did you mean 'sdxl'?`)."""
    import ast
    import difflib
    import re

    found = re.match(r"argument (?P<flag>[^:/ ]+)(?:/\S+)?: invalid choice: (?P<value>'.*?') \(choose from", message)
    if found is None:
        return message
    flag = found["flag"]
    action = parser._option_string_actions.get(flag) or next(
        (a for a in parser._actions if a.dest == flag and not a.option_strings), None)
    if action is None or not action.choices:
        return message
    close = difflib.get_close_matches(ast.literal_eval(found["value"]), [str(c) for c in action.choices], n=1)
    if not close:
        return message
    return message.replace(" (choose from", f"; did you mean {close[0]!r}? (choose from", 1)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sdclip", description="Stable Diffusion's text conditioning.")
    parser.add_argument("--version", action="version", version=f"sdclip {sdclip.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"sdclip.cli.{name}").add_parser(sub)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; an unknown flag is reported with the usage of its own command, not the top-level one, and
    before argparse's missing-argument check (`--promt "a fox"` is a typo, not a missing --prompt)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = next((a for a in argv if a in sub.choices), None)
    if command is not None:
        _refuse_unknown_flags(sub.choices[command], argv[argv.index(command) + 1 :])
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _refuse_unknown_flags(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """The first `--flag` this command does not know (nor abbreviates, as argparse allows), with the
    closest known flag."""
    import difflib

    known = [o for o in parser._option_string_actions if o.startswith("--")]
    for token in argv:
        if token == "--":
            return
        name = token.split("=", 1)[0]
        if not name.startswith("--") or name in known or sum(o.startswith(name) for o in known) == 1:
            continue
        close = difflib.get_close_matches(name, known, n=1)
        parser.error(f"unrecognized arguments: {name}" + (f" (did you mean {close[0]}?)" if close else ""))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse(argv)
    except KeyboardInterrupt:
        print("sdclip: interrupted", file=sys.stderr)
        return 130
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback through torch; 130 as shells report SIGINT
        print(f"sdclip: interrupted{INTERRUPTED.get(args.command, '')}", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        print(f"sdclip: {args.command} needs {top}, which is not installed: pip install 'sdclip[{EXTRAS[top]}]' "
              f"(from a checkout: pip install -e '.[{EXTRAS[top]}]')"
              + (" (torch: bring your build; CPU only: pip install torch --index-url "
                 "https://download.pytorch.org/whl/cpu)" if EXTRAS[top] == "torch" else ""), file=sys.stderr)
        return 2
    except BrokenPipeError:  # `sdclip inspect … --json | head`: the reader is gone, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except PromptSyntaxError as exc:
        print(f"sdclip: prompt syntax error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, FileNotFoundError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"sdclip: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
