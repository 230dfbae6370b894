"""Shard files: written so that a SIGKILL or a full disk never leaves a file a job would count.

A shard is written to a temporary file in the same folder, fsynced, then renamed over its final name
(`os.replace` is atomic on one filesystem); the folder is fsynced so the rename survives a power cut. Its
sha256 is computed from the bytes written, for the manifest and `--verify`.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path

from sdclip.outputs import TMP_SUFFIX, atomic_path

#: shard metadata `sdclip_shard`: "2" = a repeated caption may be stored once (a reference row, below); shards
#: without it store every row
SHARD_VERSION = "2"
#: the per-row keys that say which row it is, not what its conditioning is: a reference row keeps its own,
#: prefixed `ref_` (`ref_index`, `ref_caption_sha256`, …), plus `ref_source`, the input index whose stored
#: tensors are its tensors (the first row holding the same caption; both rows' `caption_sha256` are equal)
ROW_KEYS = ("index", "caption_sha256", "image_index", "caption_line")
REF = "ref_"
SOURCE = "ref_source"


def shard_name(k: int) -> str:
    """Shard k covers input indices [k·shard_size, (k+1)·shard_size): the name is the range, whatever engine wrote it."""
    return f"shard-{k:05d}.safetensors"


def header_rows(header: dict) -> int:
    """Rows a shard holds (read from its safetensors header): stored rows plus reference rows."""
    refs = header.get(REF + "index")
    return int(header["index"]["shape"][0]) + (int(refs["shape"][0]) if isinstance(refs, dict) else 0)


@contextlib.contextmanager
def atomic_naming_final(final: Path, cached: bool = True) -> Iterator[Path]:
    """`atomic_path(final)`, with any OSError naming `final` (a failed write names no file, a failed open its
    temporary), so a job can say which of its files it could not write."""
    try:
        with atomic_path(final, cached) as tmp:
            yield tmp
    except OSError as exc:
        exc.filename = str(final)
        raise


def write_bytes_atomic(final: Path, data: bytes) -> None:
    """Write `data` to `final` atomically; an OSError names `final`."""
    with atomic_naming_final(final) as tmp:
        tmp.write_bytes(data)


def write_shard(final: Path, tensors: dict, metadata: dict[str, str]) -> tuple[str, int]:
    """Write a safetensors shard atomically; returns (sha256, size in bytes).

    Written with sdclip's own streaming writer (plain `os` writes), not safetensors' `save_file`: a full disk
    is then an `OSError` (ENOSPC) naming `final`, which the job reports in one line, where the Rust writer
    raised a `SafetensorError` holding the OS error as text. Header and tensors are written in order, so the
    sha256 is taken from the bytes as they go out, and the file is never read back."""
    from sdclip.safetensors_stream import StreamingSafetensors

    specs = {name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()}
    with atomic_naming_final(final, cached=False) as tmp:
        out = StreamingSafetensors(tmp, specs, metadata, hashed=True)
        try:
            for name, t in tensors.items():
                out.write(name, 0, t)
        finally:
            out.close()
        digest = out.sha256()
        size = tmp.stat().st_size
    return digest, size


def read_header(path: Path) -> dict:
    """The safetensors JSON header (tensor names → dtype/shape/offsets, `__metadata__`), read without
    loading any tensor; raises ValueError for a file that is not a whole safetensors file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path.name}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise ValueError(f"{path.name}: bad safetensors header length")
        header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise ValueError(f"{path.name}: {size} bytes, the header describes {8 + n + end}")
    return header


def remove_stale_temps(folder: Path) -> int:
    """Remove temporary files a killed job left (`.shard-….tmp`, `.manifest.json….tmp`); returns how many."""
    n = 0
    for p in folder.glob(f".*{TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n
