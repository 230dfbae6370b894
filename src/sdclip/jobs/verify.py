"""`sdclip embed --verify DIR`: re-hash every shard and check that every valid input index appears exactly once."""

from __future__ import annotations

from pathlib import Path

from sdclip.jobs.folder_lock import held
from sdclip.jobs.manifest import JobError, Manifest, iter_errors, row_lists, sidecar_name
from sdclip.jobs.overwrite import inside, regular
from sdclip.jobs.shards import REF, SOURCE, shard_name
from sdclip.outputs import sha256_file


def verify(out: str | Path) -> dict:
    """Returns {"shards", "rows"}; raises JobError naming the first problems found."""
    from safetensors import safe_open

    out = Path(out)
    if held(out):  # its manifest and shards are changing: any answer now would be wrong a moment later
        raise JobError(f"{out}: an `sdclip embed` job is running in this folder: --verify it once that job has ended")
    m = Manifest.load(out)
    problems: list[str] = []
    seen: dict[int, str] = {}
    made_from: dict[int, str] = {}  #: index → sha256 of the caption its item was made from
    stored: dict[int, str] = {}  #: the same, for rows stored with their tensors (what a reference reads)
    refs: list[tuple[int, int, str]] = []  #: reference rows: (index, source index, caption sha256)
    from sdclip.jobs.formats import FORMATS

    fmt = FORMATS.get(str(m.config.get("format")))
    images = Path(m.info.get("captions", ""))
    root = (out if fmt.root == "out" else images) if fmt is not None else images
    suffixes = fmt.suffixes if fmt is not None else ()
    for rec in m.shards.values():
        name = rec.get("file") or f"shard {rec['shard']}"
        if "files" in rec or "sidecar" in rec:
            lists = row_lists(out, rec)  # inline (earlier versions) or the shard's sidecar, checked
            if lists is None:
                problems.append(f"shard {rec['shard']}: its sidecar {sidecar_name(int(rec['shard']))} is missing or "
                                "not the one the manifest records: re-run the job to redo that shard"
                                if "sidecar" in rec else f"shard {rec['shard']}: malformed file lists")
                continue
            for rel, digest in lists["files"].items():
                p = inside(root, rel, suffixes)  # the manifest is untrusted: never a path out of the format's folder
                if p is None:
                    where = "--out" if root == out else "the image folder"
                    problems.append(f"{rel!r}: not a trainer file inside {where}")
                elif not regular(p):
                    problems.append(f"{rel}: missing")
                elif sha256_file(p) != digest:
                    problems.append(f"{rel}: sha256 differs from the manifest")
            indices = lists["indices"]
            made_from.update(zip(indices, lists["caption_sha256"]))
        elif rec.get("file") is None:
            indices = []
        elif rec["file"] != shard_name(int(rec["shard"])):
            problems.append(f"shard {rec['shard']}: file {rec['file']!r} is not its name")
            continue
        else:
            path = out / rec["file"]
            if not path.is_file():
                problems.append(f"{name}: missing")
                continue
            if sha256_file(path) != rec["sha256"]:
                problems.append(f"{name}: sha256 differs from the manifest")
                continue
            with safe_open(str(path), framework="pt") as f:
                indices = f.get_tensor("index").tolist()
                if "caption_sha256" in f.keys():
                    stored.update(zip(indices, (bytes(r).hex() for r in f.get_tensor("caption_sha256").tolist())))
                if SOURCE in f.keys():  # a repeated caption stored once (sdclip.jobs.shards)
                    rows = f.get_tensor(REF + "index").tolist()
                    shas = [bytes(r).hex() for r in f.get_tensor(REF + "caption_sha256").tolist()]
                    refs.extend(zip(rows, f.get_tensor(SOURCE).tolist(), shas))
                    made_from.update(zip(rows, shas))
                    indices = indices + rows
        for i in indices:
            if not rec["start"] <= i < rec["stop"]:
                problems.append(f"{name}: index {i} outside its range [{rec['start']}, {rec['stop']})")
            if i in seen:
                problems.append(f"index {i} in both {seen[i]} and {name}")
            seen[i] = name
    made_from.update(stored)
    broken = [(i, src) for i, src, sha in refs if stored.get(src) != sha]
    if broken:
        problems.append(f"{len(broken)} row(s) refer to a row that is not stored with their caption (index "
                        f"{broken[0][0]} → index {broken[0][1]}): re-run the job to re-encode them")
    try:  # the manifest's list, or every line of errors.jsonl
        errors = {e["index"] for e in iter_errors(out, m)}
    except JobError as exc:
        problems.append(str(exc))
        errors = set()
    rows = m.scan.get("rows") or 0
    missing = [i for i in range(rows) if i not in seen and i not in errors]
    if missing:
        first = f"caption {missing[0] + 1} (index {missing[0]})"
        problems.append((f"{len(missing)} captions are in no shard, the first is {first}" if len(missing) > 1
                         else f"{first} is in no shard")
                        + ("" if m.complete else ": the job is not finished; re-run it to resume"))
    edited = edited_captions(m, made_from)
    if edited:
        shown = ", ".join(edited[:5]) + (" …" if len(edited) > 5 else "")
        problems.append(f"{len(edited)} caption(s) no longer match the cache ({shown}): re-run the job to "
                        "re-encode the shards that hold them")
    if problems:
        raise JobError(f"{out}: {len(problems)} problem(s): " + "; ".join(problems[:5]))
    return {"shards": len(m.shards), "rows": len(seen)}


def edited_captions(m: Manifest, made_from: dict[int, str]) -> list[str]:
    """Where (`line 7`, `cats/01.png`) the captions input now differs from what the cached items were made from."""
    import hashlib

    from sdclip.jobs.readers import CaptionSourceError, open_source

    captions = m.info.get("captions")
    if not made_from or not isinstance(captions, str):
        return []
    try:
        source = open_source(captions, m.config.get("column"), m.config.get("caption_extension", ".txt"),
                             bool(m.config.get("caption_lines")))
    except (CaptionSourceError, OSError, ValueError):
        return []
    out = []
    found = set()
    for rec in source.records():
        want = made_from.get(rec.index)
        if want is None:
            continue
        found.add(rec.index)
        text = rec.text if rec.text is not None else None
        if text is None or hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest() != want:
            out.append(rec.where)
    out += [f"caption {i + 1} (gone)" for i in sorted(set(made_from) - found)]
    return out
