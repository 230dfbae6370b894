"""`sdclip embed --verify DIR`: re-hash every shard and check that every valid input index appears exactly once."""

from __future__ import annotations

from pathlib import Path

from sdclip.jobs.manifest import JobError, Manifest
from sdclip.jobs.overwrite import inside, regular
from sdclip.jobs.shards import sha256_file, shard_name


def verify(out: str | Path) -> dict:
    """Returns {"shards", "rows"}; raises JobError naming the first problems found."""
    from safetensors import safe_open

    out = Path(out)
    m = Manifest.load(out)
    problems: list[str] = []
    seen: dict[int, str] = {}
    from sdclip.jobs.formats import FORMATS

    fmt = FORMATS.get(str(m.config.get("format")))
    images = Path(m.info.get("captions", ""))
    root = (out if fmt.root == "out" else images) if fmt is not None else images
    suffixes = fmt.suffixes if fmt is not None else ()
    for rec in m.shards.values():
        name = rec.get("file") or f"shard {rec['shard']}"
        if "files" in rec:
            for rel, digest in rec["files"].items():
                p = inside(root, rel, suffixes)  # the manifest is untrusted: never a path out of the format's folder
                if p is None:
                    where = "--out" if root == out else "the image folder"
                    problems.append(f"{rel!r}: not a trainer file inside {where}")
                elif not regular(p):
                    problems.append(f"{rel}: missing")
                elif sha256_file(p) != digest:
                    problems.append(f"{rel}: sha256 differs from the manifest")
            indices = rec.get("indices", [])
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
        for i in indices:
            if not rec["start"] <= i < rec["stop"]:
                problems.append(f"{name}: index {i} outside its range [{rec['start']}, {rec['stop']})")
            if i in seen:
                problems.append(f"index {i} in both {seen[i]} and {name}")
            seen[i] = name
    errors = {e["index"] for e in m.to_json()["errors"]}
    rows = m.scan.get("rows") or 0
    missing = [i for i in range(rows) if i not in seen and i not in errors]
    if missing:
        first = f"caption {missing[0] + 1} (index {missing[0]})"
        problems.append((f"{len(missing)} captions are in no shard, the first is {first}" if len(missing) > 1
                         else f"{first} is in no shard")
                        + ("" if m.complete else ": the job is not finished; re-run it to resume"))
    if problems:
        raise JobError(f"{out}: {len(problems)} problem(s): " + "; ".join(problems[:5]))
    return {"shards": len(m.shards), "rows": len(seen)}
