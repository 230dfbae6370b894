"""Caption sources for `sdclip embed`, streamed: a 1M-line file is never read into memory at once.

Every source yields `Record(index, where, text, error)` in input order: `index` is the caption's position
(line i of a .txt is index i), `where` names it for a human ("line 7", "row 12", "cats/01.png"), and a
caption that cannot be read (bad UTF-8, a missing column) has `text=None` and an `error`. Each record also
carries `seek`, an opaque position from which `read(seek, start, stop)` restarts the stream, so a shard
(an index range) can be read again cheaply by a resumed job or by a Ray worker on another machine.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import stat
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".jxl")
FORMATS = ("txt", "jsonl", "csv", "tsv", "parquet", "images")
DEFAULT_COLUMNS = ("caption", "text")
#: csv's default field limit (131,072 characters) ended a file at its first long caption; captions are
#: bounded later by the row limit, so the reader's own limit is the largest the platform allows
CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)


class CaptionSourceError(ValueError):
    """The captions input cannot be read at all (missing, unknown format, no such column, broken CSV)."""


@dataclass(frozen=True)
class Record:
    index: int
    where: str
    text: str | None
    error: str | None = None
    seek: object = 0
    #: readable, but worth a line (an image without a caption file reads as the empty caption)
    warning: str | None = None


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "images"
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("txt", "jsonl", "csv", "tsv", "parquet"):
        return suffix
    if suffix == "ndjson":
        return "jsonl"
    raise CaptionSourceError(
        f"{path}: unknown captions format {path.suffix!r}; use .txt, .jsonl, .csv, .tsv, .parquet or an image folder"
    )


class CaptionSource:
    """One captions input. `records()` streams from the start; `read(seek, start, stop)` from a saved seek."""

    format: str = ""
    #: what a source that holds no caption is (`found_nothing`): an image folder without images or captions is
    #: a wrong folder or --caption-extension, refused; an empty file is an empty dataset (0 rows, a warning)
    nothing_is_a_mistake = False
    #: what this kind of input is when it holds no record
    nothing = "an empty file (0 bytes)"

    def __init__(self, path: Path, column: str | None = None):
        self.path = Path(path)
        self.column = column
        if not self.path.exists():
            raise CaptionSourceError(f"{self.path}: no such captions file or folder")

    def records(self) -> Iterator[Record]:
        return self.read(self.start_seek(), 0, None)

    def start_seek(self) -> object:
        return 0

    def read(self, seek: object, start: int, stop: int | None) -> Iterator[Record]:
        raise NotImplementedError

    def found_nothing(self) -> str | None:
        """None when the input holds a caption (one record read), else what was found, for a one-line message:
        a job of no captions finished "0 of 0" without a word, whatever the user had pointed at."""
        return None if next(iter(self.records()), None) is not None else self.nothing

    def fingerprint(self) -> dict:
        """Size and sha256 of the input (streamed), recorded in the manifest: a changed input is a new job."""
        h = hashlib.sha256()
        size = 0
        with open(self.path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        return {"format": self.format, "size": size, "sha256": h.hexdigest()}


def _decode(raw: bytes) -> tuple[str | None, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 at byte {exc.start}"


class TextLines(CaptionSource):
    """.txt: one caption per line; a blank line is the empty prompt (never skipped). Seek = byte offset."""

    format = "txt"

    def read(self, seek: object, start: int, stop: int | None) -> Iterator[Record]:
        index = start
        with open(self.path, "rb") as f:
            f.seek(int(seek))  # type: ignore[arg-type]
            offset = int(seek)  # type: ignore[arg-type]
            for raw in f:
                if stop is not None and index >= stop:
                    return
                here = offset
                offset += len(raw)
                text, error = _decode(raw.rstrip(b"\r\n"))
                if index == 0 and text is not None and text.startswith("\ufeff"):
                    text = text[1:]  # a UTF-8 byte-order mark is not part of the first caption
                yield Record(index, f"line {index + 1}", text, error, here)
                index += 1


class JsonLines(TextLines):
    """.jsonl: one object per line, the caption in `--column` (default `caption`, then `text`)."""

    format = "jsonl"

    def read(self, seek: object, start: int, stop: int | None) -> Iterator[Record]:
        for rec in super().read(seek, start, stop):
            if rec.error is not None:
                yield rec
                continue
            try:
                obj = json.loads(rec.text)  # type: ignore[arg-type]
            except json.JSONDecodeError as exc:
                yield Record(rec.index, rec.where, None, f"invalid JSON: {exc.msg}", rec.seek)
                continue
            except RecursionError:
                yield Record(rec.index, rec.where, None, "invalid JSON: nested too deeply", rec.seek)
                continue
            except ValueError as exc:  # e.g. an integer of more than 4300 digits
                yield Record(rec.index, rec.where, None, f"invalid JSON: {str(exc).splitlines()[0]}", rec.seek)
                continue
            text, error = _pick(obj, self.column)
            yield Record(rec.index, rec.where, text, error, rec.seek)


def _pick(obj: object, column: str | None) -> tuple[str | None, str | None]:
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    names = (column,) if column else DEFAULT_COLUMNS
    for name in names:
        if name in obj:
            value = obj[name]
            if value is None:
                return "", None
            if not isinstance(value, str):
                return None, f"column {name!r} is {type(value).__name__}, not text"
            return value, None
    return None, f"no column {' or '.join(repr(n) for n in names)}"


class Delimited(CaptionSource):
    """.csv / .tsv with a header row. Seek = (byte offset, line number) of a record's first line, so a quoted
    caption spanning lines still restarts cleanly."""

    format = "csv"
    delimiter = ","
    nothing = "a header line and no rows"

    def __init__(self, path: Path, column: str | None = None):
        super().__init__(path, column)
        with open(self.path, "rb") as f:
            header_raw = f.readline()
            self._body = f.tell()
        header, error = _decode(header_raw.rstrip(b"\r\n"))
        if error is not None or header is None:
            raise CaptionSourceError(f"{self.path}: the header line is not UTF-8")
        names = next(csv.reader([header.lstrip("\ufeff")], delimiter=self.delimiter), [])
        wanted = (column,) if column else DEFAULT_COLUMNS
        found = next((n for n in wanted if n in names), None)
        if found is None:
            raise CaptionSourceError(
                f"{self.path}: no column {' or '.join(repr(n) for n in wanted)} in the header "
                f"({', '.join(names)}): name the caption column with --column"
            )
        self._col = names.index(found)

    def start_seek(self) -> object:
        return (self._body, 2)

    def read(self, seek: object, start: int, stop: int | None) -> Iterator[Record]:
        offset, line = seek  # type: ignore[misc]
        state = {"offset": offset, "line": line, "bad": None}

        def lines(f: io.BufferedReader) -> Iterator[str]:
            for raw in f:
                state["offset"] += len(raw)
                state["line"] += 1
                text = raw.decode("utf-8", errors="surrogateescape")
                if state["bad"] is None and any("\udc80" <= c <= "\udcff" for c in text):
                    state["bad"] = "invalid UTF-8"
                yield text

        index = start
        if csv.field_size_limit() < CSV_FIELD_LIMIT:
            csv.field_size_limit(CSV_FIELD_LIMIT)
        with open(self.path, "rb") as f:
            f.seek(offset)
            it = lines(f)
            reader = csv.reader(it, delimiter=self.delimiter)
            here = (offset, line)
            while stop is None or index < stop:
                state["bad"] = None
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    # the parser cannot resynchronise: every later row would be lost, so the file is refused
                    raise CaptionSourceError(f"{self.path} line {here[1]}: CSV error ({exc}); no row after it "
                                             "could be read reliably: fix the file") from None
                where = f"line {here[1]}"
                if state["bad"] is not None:
                    yield Record(index, where, None, state["bad"], here)
                elif self._col >= len(row):
                    yield Record(index, where, None, f"only {len(row)} fields", here)
                else:
                    yield Record(index, where, row[self._col], None, here)
                here = (state["offset"], state["line"])
                index += 1


class TabSeparated(Delimited):
    format = "tsv"
    delimiter = "\t"


class Parquet(CaptionSource):
    """.parquet: the caption column read one row group at a time. Seek = row index. pyarrow's errors for a
    damaged file (a cut one is a ValueError naming no file, a garbage footer a bare OSError) are one line
    naming the file; a damaged row group past the first also names its rows (the scan meets it before any
    caption is encoded, so a job stops there with nothing written, and a resumed one keeps its shards)."""

    format = "parquet"

    def __init__(self, path: Path, column: str | None = None):
        super().__init__(path, column)
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._broken = (OSError, pa.ArrowException)
        try:
            self._file = pq.ParquetFile(self.path)
            names = self._file.schema_arrow.names
        except self._broken as exc:
            raise self._unreadable(exc) from None
        wanted = (column,) if column else DEFAULT_COLUMNS
        found = next((n for n in wanted if n in names), None)
        if found is None:
            raise CaptionSourceError(
                f"{self.path}: no column {' or '.join(repr(n) for n in wanted)} ({', '.join(names)}): "
                "name the caption column with --column"
            )
        self._name = found

    def read(self, seek: object, start: int, stop: int | None) -> Iterator[Record]:
        meta = self._file.metadata
        first = 0
        index = start
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if first + n <= start:
                first += n
                continue
            try:
                values = self._file.read_row_group(g, columns=[self._name]).column(0).to_pylist()
            except self._broken as exc:
                raise self._unreadable(exc, f"row group {g + 1} of {meta.num_row_groups} (rows {first + 1}–"
                                       f"{first + n}) is not readable Parquet", "; the rows before it read") from None
            for k in range(max(0, start - first), n):
                if stop is not None and index >= stop:
                    return
                value = values[k]
                where = f"row {index + 1}"
                if value is None:
                    yield Record(index, where, "", None, index)
                elif not isinstance(value, str):
                    yield Record(index, where, None, f"{type(value).__name__}, not text", index)
                else:
                    yield Record(index, where, value, None, index)
                index += 1
            first += n

    def found_nothing(self) -> str | None:
        meta = self._file.metadata  # the footer's count: no row group is read
        return None if meta.num_rows else f"a Parquet file of 0 rows ({meta.num_row_groups} row group(s))"

    def _unreadable(self, exc: BaseException, what: str = "not a readable Parquet file",
                    after: str = "") -> CaptionSourceError:
        lines = ("".join(c for c in line if c.isprintable()).strip(" :") for line in str(exc).splitlines())
        reason = next((line for line in lines if line), type(exc).__name__)  # pyarrow's may hold a damaged byte
        return CaptionSourceError(f"{self.path}: {what} ({reason}){after}")


class ImageFolder(CaptionSource):
    """An image folder with sidecar captions (`cat.png` + `cat.txt`, as trainers keep them), indexed by
    sorted relative path. `caption_extension` is kohya sd-scripts' `--caption_extension` (default `.txt`). As in
    sd-scripts, an image without a caption file is trained on the empty caption: it reads as "" with a
    warning. A sidecar that is not a regular file (a folder, a FIFO) or not UTF-8 is an error for that image,
    found without opening it (a FIFO would block). So is an image whose path is not UTF-8: manifests, trainer
    sidecars and the terminal cannot name it, so it is listed (escaped, `\\xff.png`) and keeps its index. Seek =
    position."""

    format = "images"
    nothing_is_a_mistake = True

    def __init__(self, path: Path, column: str | None = None, caption_extension: str = ".txt", lines: bool = False):
        super().__init__(path, column)
        #: every non-blank line of a sidecar is its own caption, indexed (image, line) as SimpleTuner does
        self.lines = lines
        ext = caption_extension if caption_extension.startswith(".") else "." + caption_extension
        if ext == "." or "/" in ext or ext.lower() in IMAGE_SUFFIXES:
            raise CaptionSourceError(f"--caption-extension {caption_extension!r}: give a suffix such as .txt or .caption")
        self.caption_extension = ext

    def images(self) -> Iterator[str]:
        """Relative image paths (POSIX), sorted, walked lazily one folder at a time."""
        return (rel for rel, e in _entries(self.path)
                if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)

    def sidecar(self, rel: str) -> Path:
        return self.path / (os.path.splitext(rel)[0] + self.caption_extension)

    def _caption(self, rel: str) -> tuple[bytes | None, str | None]:
        """(bytes, None), (None, None) when there is no caption file, or (None, error)."""
        if _printable(rel) != rel:
            return None, NAME_NOT_UTF8
        sidecar = self.sidecar(rel)
        try:
            mode = os.stat(sidecar).st_mode
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"caption file {sidecar.name}: {exc.strerror or exc}"
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            return None, f"caption file {sidecar.name} is {kind}"
        try:
            return sidecar.read_bytes(), None
        except OSError as exc:
            return None, f"caption file {sidecar.name}: {exc.strerror or exc}"

    def found_nothing(self) -> str | None:
        """None once an image has a caption file (of any content: an empty one is a deliberately empty caption);
        else what the folder holds: no image, or images none of which has a `caption_extension` file (then
        which other suffixes sit beside them: the caption files a wrong --caption-extension missed)."""
        images = []
        for rel in self.images():
            if os.path.lexists(self.sidecar(rel)):
                return None
            images.append(rel)
        if not images:
            found = _most(Counter(os.path.splitext(e.name)[1] or "(no suffix)" for _, e in _entries(self.path)
                                  if not e.is_dir() and not e.name.startswith(".")))  # files, as os.walk sorts them
            return (f"no image ({', '.join(IMAGE_SUFFIXES)}) in the folder or its subfolders (hidden folders "
                    f"skipped); found {found or 'nothing else'}")
        said = f"{len(images)} image(s), none with a {self.caption_extension} caption file (--caption-extension)"
        beside = _most(_suffixes_beside(self.path, images))
        return said + (f"; beside them: {beside}" if beside else "")

    def start_seek(self) -> object:
        return (0, 0) if self.lines else 0

    def read(self, seek: object, start: int, stop: int | None) -> Iterator[Record]:
        if self.lines:
            yield from self._read_lines(seek, start, stop)
            return
        for index, rel in enumerate(self.images()):
            if index < start:
                continue
            if stop is not None and index >= stop:
                return
            raw, error = self._caption(rel)
            if error is not None:
                yield Record(index, _printable(rel), None, error, index)
                continue
            if raw is None:
                yield Record(index, rel, "", None, index,
                             warning=f"no caption file {self.sidecar(rel).name}: the empty caption (as sd-scripts)")
                continue
            text, error = _decode(raw.strip(b"\r\n"))
            if text is not None:
                text = text.lstrip("\ufeff").strip()
            yield Record(index, rel, text, error, index)

    def _read_lines(self, seek: object, start: int, stop: int | None) -> Iterator[Record]:
        """--caption-lines: one record per non-blank sidecar line; seek = (image position, line)."""
        first, line0 = (tuple(seek) if isinstance(seek, (tuple, list)) else (int(seek), 0))  # type: ignore[arg-type]
        index = start
        for pos, rel in enumerate(self.images()):
            if pos < first:
                continue
            raw, error = self._caption(rel)
            if error is not None:
                captions: list = [(None, error, None)]
            elif raw is None:
                captions = [("", None, f"no caption file {self.sidecar(rel).name}: the empty caption (as sd-scripts)")]
            else:
                text, error = _decode(raw)
                if text is None:
                    captions = [(None, error, None)]
                else:
                    found = [t.strip() for t in text.lstrip("\ufeff").splitlines() if t.strip()]
                    captions = [(t, None, None) for t in found] or [("", None, None)]
            for k, (text, err, warning) in enumerate(captions):
                if pos == first and k < line0:
                    continue
                if stop is not None and index >= stop:
                    return
                where = _printable(rel) if len(captions) == 1 else f"{rel} line {k + 1}"
                yield Record(index, where, text, err, (pos, k), warning)
                index += 1

    def fingerprint(self) -> dict:
        """Hash of every image's relative path, size and caption bytes: the folder's captions as a job sees them."""
        h = hashlib.sha256()
        size = 0
        for rel in self.images():
            raw, error = self._caption(rel)
            cap = raw if raw is not None else (b"\x00missing" if error is None else b"\x00error")
            h.update(os.fsencode(rel) + f"\x00{len(cap)}\x00".encode())  # the name's own bytes, UTF-8 or not
            h.update(cap)
            size += len(cap)
        return {"format": self.format, "size": size, "sha256": h.hexdigest()}


NAME_NOT_UTF8 = "the file name is not UTF-8: rename the image (and its caption file)"


def _entries(folder: Path, rel: str = "") -> Iterator[tuple[str, os.DirEntry]]:
    """(relative POSIX path, entry) of everything below `folder` not walked into, sorted, walked lazily one
    folder at a time: hidden folders skipped, links to folders not followed (what `ImageFolder.images` reads)."""
    for e in sorted(os.scandir(folder), key=lambda e: e.name):
        path = f"{rel}{e.name}"
        if e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
            yield from _entries(Path(e.path), path + "/")
        else:
            yield path, e


def _suffixes_beside(root: Path, images: list[str]) -> Counter:
    """The suffixes of the files named as an image but not an image (`cat.caption` beside `cat.png`): one
    listing per folder that holds the images."""
    stems: dict[str, set[str]] = {}
    for rel in images:
        folder, name = os.path.split(rel)
        stems.setdefault(folder, set()).add(os.path.splitext(name)[0])
    counts: Counter = Counter()
    for folder, wanted in stems.items():
        for name in os.listdir(root / folder):
            stem, suffix = os.path.splitext(name)
            if stem in wanted and suffix and suffix.lower() not in IMAGE_SUFFIXES:
                counts[suffix] += 1
    return counts


def _most(counts: Counter, shown: int = 5) -> str:
    """Counts as "12 .caption, 3 .json": the most frequent first (then by name, so a message is the same every run)."""
    return ", ".join(f"{n} {key}" for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:shown])


def _printable(rel: str) -> str:
    """`rel` with the bytes a non-UTF-8 name decoded to (surrogates) written as `\\xff`: one printable line."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


_SOURCES: dict[str, type[CaptionSource]] = {
    "txt": TextLines,
    "jsonl": JsonLines,
    "csv": Delimited,
    "tsv": TabSeparated,
    "parquet": Parquet,
    "images": ImageFolder,
}


def open_source(path: str | Path, column: str | None = None, caption_extension: str = ".txt",
                caption_lines: bool = False) -> CaptionSource:
    """The caption source for a file (by suffix) or an image folder."""
    path = Path(path)
    if not path.exists():
        raise CaptionSourceError(f"{path}: no such captions file or folder")
    if not path.is_dir() and not path.is_file():
        raise CaptionSourceError(f"{path}: not a regular file or a folder (a FIFO or device cannot be resumed)")
    fmt = detect_format(path)
    if column and fmt == "txt":
        raise CaptionSourceError("--column applies to .jsonl / .csv / .tsv / .parquet captions, not .txt")
    if caption_lines and fmt != "images":
        raise CaptionSourceError("--caption-lines reads an image folder's sidecar files, line by line")
    if fmt == "images":
        return ImageFolder(path, column, caption_extension, caption_lines)
    return _SOURCES[fmt](path, column)
