"""The one reader for the small files a model folder holds (config.json, model_index.json, shard indexes,
tokenizer.json, vocab.json, merges.txt, spiece.model): regular files only, a size cap, a JSON nesting cap.
No torch (the tokenizer stage reads through it too).

Why: a model folder is user input. `config.json` linked to /dev/zero filled memory (MemoryError), a FIFO
named config.json blocked `open` forever, and JSON nested 100,000 deep ended in RecursionError tracebacks
(issue 24, 7b). Every failure here is one line of the caller's error type, naming the file.

- The file is opened with O_NONBLOCK (a FIFO does not block the open) and checked with fstat on the open
  descriptor (no race between a check and the open): anything but a regular file is refused by kind.
- At most `limit` + 1 bytes are ever read; a larger file is refused, whatever its size claims.
- JSON nesting is counted by a linear scan over strings and brackets before `json.loads` sees the text.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

__all__ = ["MAX_CONFIG", "MAX_DEPTH", "MAX_TOKENIZER", "file_kind", "json_depth", "loads", "open_regular",
           "read_bytes", "read_json", "read_text"]

#: config.json, model_index.json, tokenizer_config.json, shard indexes (real ones: ≤ 200 kB)
MAX_CONFIG = 16 << 20
#: tokenizer.json, vocab.json, merges.txt, spiece.model (T5's tokenizer.json: 2.4 MB; large LLM ones ≈ 30 MB)
MAX_TOKENIZER = 64 << 20
#: real configs and tokenizer files nest ≤ 6 deep
MAX_DEPTH = 64

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
#: a JSON string, escapes included: cut out before brackets are counted
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_PARENS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO (named pipe)", "a character device", …)."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _fail(error: type[ValueError], path: Path, what: str, reason: str) -> ValueError:
    return error(f"{path}: {what}: {reason}" if what else f"{path}: {reason}")


def open_regular(path: str | os.PathLike, error: type[ValueError], what: str = "",
                 missing: type[ValueError] | None = None):  # noqa: ANN201 - a binary file object
    """The file opened for reading, binary; refused unless it is a regular file (links are followed)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise (missing or error)(f"{path}: {what}: the file is missing" if what else f"{path} is missing") from None
    except IsADirectoryError:
        raise _fail(error, path, what, "not a regular file (a folder)") from None
    except OSError as e:
        raise _fail(error, path, what, f"cannot be read ({e.strerror or e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _fail(error, path, what, f"not a regular file ({file_kind(mode)}); sdclip reads these from regular files only")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, limit: int, error: type[ValueError], what: str = "",
               missing: type[ValueError] | None = None) -> bytes:
    """At most `limit` bytes of a regular file; a larger file is refused (nothing past limit + 1 is read)."""
    with open_regular(path, error, what, missing) as fh:
        try:
            data = fh.read(limit + 1)
        except OSError as e:
            raise _fail(error, Path(path), what, f"cannot be read ({e.strerror or e})") from None
    if len(data) > limit:
        raise _fail(error, Path(path), what, f"larger than {limit >> 20} MB: not a file of this kind")
    return data


def read_text(path: str | os.PathLike, limit: int, error: type[ValueError], what: str = "",
              missing: type[ValueError] | None = None) -> str:
    """A regular file of at most `limit` bytes as UTF-8 text."""
    data = read_bytes(path, limit, error, what, missing)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(error, Path(path), what, f"not UTF-8 (byte {e.start}: {e.reason})") from None


def json_depth(data: bytes | str, stop: int = MAX_DEPTH) -> int:
    """The deepest bracket nesting of a JSON text (strings skipped), counted without recursion and in C-speed
    passes: strings are cut out, brackets mapped to "(" / ")", and innermost "()" pairs removed once per level.
    Past `stop` levels the count ends at stop + 1; brackets that never close count as stop + 1 too."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    brackets = _STRING.sub(b"", raw).translate(_PARENS, _NOT_BRACKET)
    depth = 0
    while brackets:
        if depth > stop:
            return depth
        shorter = brackets.replace(b"()", b"")
        if len(shorter) == len(brackets):
            return stop + 1  # unbalanced: not JSON, and json.loads would recurse into it
        brackets, depth = shorter, depth + 1
    return depth


def loads(text: str | bytes, where: object, error: type[ValueError], what: str = "", depth: int = MAX_DEPTH) -> object:
    """`json.loads` with the nesting capped at `depth`; every failure one line of `error`."""
    if json_depth(text, depth) > depth:
        raise _fail(error, Path(str(where)), what, f"JSON nested deeper than {depth} levels: not a file of this kind")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(error, Path(str(where)), what, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (RecursionError, ValueError) as e:  # ValueError: bytes that are not UTF-8
        raise _fail(error, Path(str(where)), what, f"not valid JSON ({type(e).__name__})") from None


def read_json(path: str | os.PathLike, error: type[ValueError], what: str = "", *, limit: int = MAX_CONFIG,
              depth: int = MAX_DEPTH, missing: type[ValueError] | None = None) -> object:
    """A regular UTF-8 JSON file of at most `limit` bytes nested at most `depth` deep, parsed."""
    return loads(read_text(path, limit, error, what, missing), path, error, what, depth)
