"""One unit of work, the same for every engine: read shard k's input range, encode it, write it atomically.

Shard k covers input indices [k·S, (k+1)·S) and is read from the seek the scan saved, so any process that
sees the captions file and the job folder (a Ray actor on another machine with a shared filesystem) can do
it; rows the scan found invalid (length −1) are skipped (the manifest lists them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from sdclip.jobs.encode import CaptionEncoder
from sdclip.jobs.formats.base import RowContext
from sdclip.jobs.manifest import JobError
from sdclip.jobs.plan import JobSpec, load_scan_arrays, record_digest
from sdclip.jobs.readers import CaptionSource
from sdclip.jobs.shards import REF, SHARD_VERSION, SOURCE, shard_name, write_shard


#: rows the Conditioner's row cache keeps while a job encodes: the job already encodes each distinct caption
#: once, so its rows recur only as the odd shared row (the empty one); the cache's default 1,024 rows held
#: 40 MB of tiny SD1 rows for nothing, and could hold 8.6 GB of Flux T5 rows (512 × 4096 fp32 each)
JOB_ROW_CACHE = 16


class InputChanged(JobError):
    """The captions input no longer holds what the scan validated (edited while the job ran)."""


def config_digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def rows_digest(digests) -> str:  # noqa: ANN001
    """sha256 over a shard's per-row caption digests (the scan's uint64 array): equal iff its captions are."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(digests, dtype=np.uint64).tobytes()).hexdigest()


def caption_sha256(texts: list[str]) -> torch.Tensor:
    """[n, 32] uint8: each caption's sha256 (UTF-8), what every cached item records it was made from."""
    if not texts:
        return torch.zeros(0, 32, dtype=torch.uint8)
    raw = b"".join(hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest() for t in texts)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(len(texts), 32)


def shard_range(k: int, spec: JobSpec, rows: int) -> tuple[int, int]:
    return k * spec.shard_size, min((k + 1) * spec.shard_size, rows)


@dataclass(frozen=True)
class RowRef:
    """A row stored as a reference: its tensors are those of input index `source` (the caption's first row)."""

    index: int
    source: int
    text: str
    seek: object


@dataclass(frozen=True)
class ShardInput:
    """Shard k's valid rows as read (`ShardWork.prepare`), what `encode` and `write` take."""

    k: int
    start: int
    stop: int
    indices: tuple[int, ...]
    texts: tuple[str, ...]
    wheres: tuple[str, ...]
    seeks: tuple[object, ...]
    #: rows whose caption an earlier row holds (sdclip's own shards): stored as references, never encoded
    refs: tuple[RowRef, ...] = ()


class ShardWork:
    """Per process (or Ray actor): the encoder, the caption source and the scan arrays, loaded once."""

    def __init__(self, spec: JobSpec, digest: str, encoder: CaptionEncoder | None = None):
        self.spec = spec
        self.digest = digest
        self.out = Path(spec.out)
        self.encoder = encoder or CaptionEncoder(spec)
        cache = getattr(self.encoder.cond, "cache", None)
        if cache is not None:  # memory flat in the number of captions (bench/bench_embed.py --memory)
            cache.max_rows = min(cache.max_rows, JOB_ROW_CACHE)
        self.source: CaptionSource = spec.source()
        arrays = load_scan_arrays(self.out)
        if arrays is None:
            raise ValueError(f"{self.out}: the scan arrays are missing (is the job folder shared with this worker?)")
        self.lengths, self.last, self.digests, self.first = arrays
        from sdclip.jobs.formats import get_format

        self.format = get_format(spec.format)
        #: identical captions stored once: a later row refers to the first (sdclip's own shards only)
        self.dedupe = spec.dedupe and self.format is None
        if self.dedupe:  # a repeat is a reference, never encoded again: the encoder keeps no row for it
            self.last = self.first

    def run(self, k: int, seek: object, rows: int) -> dict:
        """Read, encode and write shard k; returns its manifest record (the local engine overlaps the three)."""
        shard = self.prepare(k, seek, rows)
        return self.write(shard, self.encode(shard))

    def prepare(self, k: int, seek: object, rows: int) -> ShardInput:
        """Read shard k's input range and check it is what the scan validated (no encoder used)."""
        start, stop = shard_range(k, self.spec, rows)
        seek = tuple(seek) if isinstance(seek, list) else seek
        indices, texts, wheres, seeks = [], [], [], []
        refs: list[RowRef] = []
        here: dict[int, str] = {}  # stored rows of this shard: index → text
        expected = start
        for rec in self.source.read(seek, start, stop):
            if rec.index != expected or rec.index >= len(self.digests) or record_digest(rec) != int(self.digests[rec.index]):
                raise self._changed(rec.where, k)
            expected += 1
            if int(self.lengths[rec.index]) < 0:
                continue
            source = int(self.first[rec.index]) if self.dedupe else rec.index
            # an earlier shard's first row: its digest is this caption's (the reader checks sha256); this
            # shard's: compared as text (a blake2b-64 collision stores the row instead)
            if source != rec.index and (source < start or here.get(source) == rec.text):
                refs.append(RowRef(rec.index, source, rec.text, rec.seek))  # type: ignore[arg-type]
                continue
            here[rec.index] = rec.text  # type: ignore[assignment]
            indices.append(rec.index)
            texts.append(rec.text)
            wheres.append(rec.where)
            seeks.append(rec.seek)
        if expected != stop:
            raise self._changed(f"caption {expected + 1} (the input ends earlier)", k)
        return ShardInput(k, start, stop, tuple(indices), tuple(texts), tuple(wheres), tuple(seeks), tuple(refs))

    def encode(self, shard: ShardInput) -> dict[str, torch.Tensor]:
        """The shard's rows (the only step that uses the encoder: call it from one thread, in shard order)."""
        self.encoder.forget_before(shard.start)
        if not shard.indices:  # every row of the range invalid or a reference: an empty shard of the right shapes
            tensors = {name: t[:0] for name, t in self.encoder.encode([""], [1]).items()}
        else:
            lengths = [int(self.lengths[i]) for i in shard.indices]
            reuse = [int(self.last[i]) for i in shard.indices]
            tensors = self.encoder.encode(list(shard.texts), lengths, reuse, position=shard.stop - 1)
        if self.spec.varlen and self.format is None:  # packed here: the padded rows never wait for the writer
            from sdclip.jobs.varlen import pack

            tensors = pack(tensors)
        return tensors

    def write(self, shard: ShardInput, tensors: dict[str, torch.Tensor]) -> dict:
        """Hash and write shard k's files atomically; returns its manifest record (no encoder used: safe in a
        writer thread while the next shard encodes)."""
        k, start, stop = shard.k, shard.start, shard.stop
        indices, texts, wheres, seeks = list(shard.indices), list(shard.texts), list(shard.wheres), shard.seeks
        record = {"shard": k, "start": start, "stop": stop, "rows": len(indices) + len(shard.refs),
                  "rows_digest": rows_digest(self.digests[start:stop])}
        if self.format is not None:  # a trainer's own files (sdclip.jobs.formats)
            ctx = RowContext(self.encoder.family.name, self.encoder.widths, self.encoder.targets,
                             Path(self.spec.captions), self.out, wheres, texts, tensors)
            record["files"] = self.format.write(ctx)
            record["indices"] = indices
            record["caption_sha256"] = [bytes(r.tolist()).hex() for r in caption_sha256(texts)]
            return record
        tensors = {"index": torch.tensor(indices, dtype=torch.int64), **tensors, "caption_sha256": caption_sha256(texts)}
        if self.spec.caption_lines:  # which image, which of its sidecar's lines (SimpleTuner's (image, k))
            tensors["image_index"] = torch.tensor([int(q[0]) for q in seeks], dtype=torch.int64)
            tensors["caption_line"] = torch.tensor([int(q[1]) for q in seeks], dtype=torch.int32)
        name = shard_name(k)
        meta = {"sdclip_job": self.digest, "start": str(start), "stop": str(stop), "rows_digest": record["rows_digest"],
                "options": json.dumps(self.spec.options, sort_keys=True), "family": self.encoder.family.name,
                "slots": str(self.encoder.slots)}
        if self.dedupe:
            tensors.update(reference_columns(shard.refs, self.spec.caption_lines))
            meta["sdclip_shard"] = SHARD_VERSION
            record["references"] = len(shard.refs)
        if self.spec.varlen:  # packed by `encode`; its pair last, as ever
            from sdclip.jobs.varlen import KEY, LENGTHS

            tensors = {**{k: v for k, v in tensors.items() if k not in (KEY, LENGTHS)},
                       KEY: tensors[KEY], LENGTHS: tensors[LENGTHS]}
        digest, size = write_shard(self.out / name, tensors, meta)
        record.update(file=name, sha256=digest, bytes=size)
        return record

    def _changed(self, where: str, k: int) -> InputChanged:
        return InputChanged(
            f"{self.spec.captions} changed after the job validated it ({where} is not what was read then): "
            f"shard {k} and later not written; re-run once it no longer changes (edited captions are re-encoded)"
        )


def reference_columns(refs: tuple[RowRef, ...], caption_lines: bool) -> dict[str, torch.Tensor]:
    """A shard's reference rows (sdclip.jobs.shards.ROW_KEYS, prefixed `ref_`), in index order."""
    cols = {REF + "index": torch.tensor([r.index for r in refs], dtype=torch.int64),
            SOURCE: torch.tensor([r.source for r in refs], dtype=torch.int64),
            REF + "caption_sha256": caption_sha256([r.text for r in refs])}
    if caption_lines:
        cols[REF + "image_index"] = torch.tensor([int(r.seek[0]) for r in refs], dtype=torch.int64)  # type: ignore[index]
        cols[REF + "caption_line"] = torch.tensor([int(r.seek[1]) for r in refs], dtype=torch.int32)  # type: ignore[index]
    return cols


def stale_referrers(out: Path, shards: dict[str, dict], dropped: list[dict], shard_size: int) -> list[str]:
    """Kept shards (manifest keys) whose reference rows would read another caption once the dropped shards are
    re-encoded after an edit, and so must be re-encoded too (then, in turn, the shards referring to those).

    A reference i → s into a re-encoded shard stays right exactly when s is again its caption's first row
    (the re-encoded shard stores it) with i's caption: first[s] == s and equal digests in the new scan; i's
    own caption is unchanged, as its shard is kept. Anything else (s edited, or an earlier row now holds
    that caption) is re-encoded, never left pointing at new tensors."""
    import numpy as np
    from safetensors import safe_open

    arrays = load_scan_arrays(out)
    gone = {int(r["shard"]) for r in dropped if isinstance(r.get("shard"), int)}
    if not gone or arrays is None:
        return []
    _, _, digests, first = arrays
    n = len(first)
    refs: dict[str, tuple] = {}
    for key, rec in shards.items():
        if rec.get("references") == 0 or rec.get("file") != shard_name(int(rec["shard"])):
            continue  # none recorded (an adopted shard records no count: read)
        try:
            with safe_open(str(out / rec["file"]), framework="np") as f:
                if SOURCE in f.keys():
                    refs[key] = (f.get_tensor(REF + "index"), f.get_tensor(SOURCE))
        except Exception:  # noqa: BLE001 - unreadable: the whole-file check re-encodes it anyway
            continue
    stale: list[str] = []
    while True:
        found = []
        for key, (rows, sources) in refs.items():
            hit = np.isin(sources // shard_size, list(gone))
            i, s = rows[hit], sources[hit]
            ok = (s >= 0) & (s < n) & (i >= 0) & (i < n)
            ok[ok] = (first[s[ok]] == s[ok]) & (digests[s[ok]] == digests[i[ok]])
            if not ok.all():
                found.append(key)
        if not found:
            return stale
        for key in found:
            del refs[key]
            stale.append(key)
            gone.add(int(shards[key]["shard"]))
