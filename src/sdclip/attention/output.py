"""`sdclip attention --out DIR`: write the result into a folder without ever removing or replacing a file
the command did not write (issue 24.1: a user's `DIR/words/` was replaced, its file gone).

How it knows its own files: every run leaves a record, `DIR/.sdclip-attention.json`, naming each file it
wrote with the file's sha256. A later run may replace or remove a file only when the record names it and
its bytes still hash to what was recorded (a file the user edited since is theirs now). Anything else at one
of the places the command writes (`maps.safetensors`, `tokens.json`, `image.png`, `contact_sheet.png`,
anything under `words/`) makes the run refuse before the pipeline loads, naming the files; every other file in
DIR is left alone (results are written beside them).

Atomic: the result is assembled in a hidden temporary folder beside DIR (inside it when DIR exists) and
moved in file by file with `os.replace`; the record is rewritten first to cover both the old and the new
files, so a run killed half-way leaves a folder the next run still recognises as its own. A new DIR is
one rename. Modes follow the umask (issue 19.11), as any new file or folder would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from sdclip.outputs import OutputError, file_mode, folder_mode, fsync_dir, pid_alive, reason, sha256_file

RECORD = ".sdclip-attention.json"
#: the assembling folder's name: TMP_PREFIX + PID + "." + random + ".tmp"
TMP_PREFIX = ".sdclip-attention."
FILES = ("maps.safetensors", "tokens.json", "image.png", "contact_sheet.png")
WORDS = "words"
#: the names the command writes in DIR (for sdclip.outputs.check_output_folder's `writes`)
WRITES = (*FILES, WORDS, RECORD)
#: how many foreign files a refusal names
_SHOWN = 5


def _record(out: Path) -> dict[str, list[str]] | None:
    """The record's {relative path: [sha256, …]}; {} when there is none; None when RECORD is not ours."""
    path = out / RECORD
    if not os.path.lexists(path):
        return {}
    if path.is_symlink() or not path.is_file() or path.stat().st_size > 1 << 20:
        return None
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    files = doc.get("files") if isinstance(doc, dict) and doc.get("tool") == "sdclip attention" else None
    if not isinstance(files, dict):
        return None
    ok = {k: v for k, v in files.items() if _result_place(k) and isinstance(v, list)}
    return ok if len(ok) == len(files) else None  # any other entry (`../victim`, an absolute path): not ours


def _result_place(rel: object) -> bool:
    """A path the command writes: one of FILES, or `words/NAME` with NAME a plain file name. A record is
    untrusted input; an entry anywhere else must never be removed on its say-so."""
    if not isinstance(rel, str):
        return False
    if rel in FILES:
        return True
    head, sep, name = rel.partition("/")
    return (head == WORDS and sep == "/" and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name)


def _occupants(out: Path) -> list[str]:
    """Relative paths of everything at the places the command writes (links and folders included)."""
    found = [name for name in FILES if os.path.lexists(out / name)]
    words = out / WORDS
    if words.is_symlink() or (os.path.lexists(words) and not words.is_dir()):
        found.append(WORDS)
    elif words.is_dir():
        for root, dirs, files in os.walk(words):
            rel = Path(root).relative_to(out)
            found += [str(rel / n) for n in files]
            found += [str(rel / n) for n in dirs if (Path(root) / n).is_symlink()]
    return found


def _ours(out: Path, rel: str, record: dict[str, list[str]]) -> bool:
    path = out / rel
    return rel in record and not path.is_symlink() and path.is_file() and sha256_file(path) in record[rel]


def foreign_files(out: Path) -> list[str]:
    """Files at the places the command writes that it did not write (or that changed since): never touched."""
    if not out.is_dir():
        return []
    record = _record(out)
    if record is None:
        return [RECORD]
    return [rel for rel in _occupants(out) if not _ours(out, rel, record)]


def check_folder(out: Path, flag: str = "--out") -> None:
    """Refuse, before the pipeline loads, a DIR whose result places hold files this command did not write."""
    foreign = foreign_files(Path(out))
    if foreign:
        shown = ", ".join(foreign[:_SHOWN]) + (f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else "")
        raise OutputError(
            f"{flag} {out} holds {len(foreign)} file(s) that sdclip attention did not write ({shown}); it never "
            "replaces or removes them: choose another folder or move them"
        )


def _write_record(folder: Path, files: dict[str, list[str]]) -> None:
    path = folder / RECORD
    tmp = folder / f".{RECORD}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps({"tool": "sdclip attention", "files": files}, indent=1, sort_keys=True), "utf-8")
        os.chmod(tmp, file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temps(folder: Path) -> int:
    """Remove the temporary folders that killed runs left in `folder` (`.sdclip-attention.PID.*.tmp` whose
    PID is gone: ours by name, and no live run's); returns how many."""
    n = 0
    for p in folder.glob(f"{TMP_PREFIX}*.tmp"):
        pid = p.name[len(TMP_PREFIX):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n


def slug(word: str) -> str:
    """A word as a safe file name part (ASCII word characters and dashes, at most 40)."""
    return re.sub(r"[^\w-]+", "_", word, flags=re.ASCII).strip("_")[:40] or "word"


def _assemble(tmp: Path, maps, image, metadata: dict[str, str]) -> None:  # noqa: ANN001
    from safetensors.torch import save_file

    from sdclip.attention.pictures import contact_sheet, word_overlays

    meta = {"layout": "[N, H, W] at latent size", **metadata, "image_size": "x".join(map(str, maps.image_size[::-1]))}
    save_file({"maps": maps.maps.float().contiguous()}, str(tmp / "maps.safetensors"), metadata=meta)
    (tmp / "tokens.json").write_text(json.dumps([s.to_json() for s in maps.slots], ensure_ascii=False, indent=1), "utf-8")
    image.save(tmp / "image.png")
    (tmp / WORDS).mkdir()
    os.chmod(tmp / WORDS, folder_mode())
    for i, (word, pic) in enumerate(word_overlays(maps, image)):
        pic.save(tmp / WORDS / f"{i:02d}_{slug(word)}.png")
    contact_sheet(maps, image).save(tmp / "contact_sheet.png")


def write_result(out: Path, maps, image, metadata: dict[str, str], flag: str = "--out") -> None:  # noqa: ANN001
    """Every output file of one run into `out`, replacing only files an earlier run wrote (see the module);
    a failed write (a full disk) is one line; it fails while assembling, before anything is moved in."""
    try:
        _write_result(Path(out), maps, image, metadata, flag)
    except OSError as exc:
        raise OutputError(f"cannot write {flag} {out}: {reason(exc)}") from None


def _write_result(out: Path, maps, image, metadata: dict[str, str], flag: str) -> None:  # noqa: ANN001
    if os.path.lexists(out) and not out.is_dir():
        raise OutputError(f"{flag} {out} exists and is not a folder")
    check_folder(out, flag)  # again: the run took a while
    exists = out.is_dir()
    if not exists:
        out.parent.mkdir(parents=True, exist_ok=True)
    where = out if exists else out.parent
    remove_stale_temps(where)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}.", suffix=".tmp", dir=where))
    try:
        os.chmod(tmp, folder_mode())
        _assemble(tmp, maps, image, metadata)
        new: dict[str, list[str]] = {}
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                os.chmod(path, file_mode())  # safetensors writes 0600
                with open(path, "rb+") as fh:
                    os.fsync(fh.fileno())
                new[str(path.relative_to(tmp))] = [sha256_file(path)]
        if not exists:
            _write_record(tmp, new)
            os.replace(tmp, out)
            fsync_dir(out.parent)
            return
        old = _record(out) or {}
        _write_record(out, {k: sorted(set(old.get(k, [])) | set(new.get(k, []))) for k in old.keys() | new.keys()})
        if not (out / WORDS).is_dir():
            (out / WORDS).mkdir()
        for rel in new:
            os.replace(tmp / rel, out / rel)
        for rel in sorted(old.keys() - new.keys()):  # a longer earlier prompt's overlays: ours, unchanged
            if _ours(out, rel, old):
                (out / rel).unlink()
        _write_record(out, new)
        fsync_dir(out / WORDS)
        fsync_dir(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
