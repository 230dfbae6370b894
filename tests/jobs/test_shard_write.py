"""The shard write path: bytes straight from the tensors' memory, the sha256 taken as they are written.

Oracles: safetensors' own `save_file` (where its header is the same), the writer as it was before (a copy
below: header + `.numpy().tobytes()`, digest by re-reading the file), and `sha256_file` of the final file."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from embed_rows import file_size_limit
from safetensors.torch import load_file, save_file

from sdclip.jobs.shards import write_shard
from sdclip.outputs import sha256_file
from sdclip.safetensors_stream import DTYPES, StreamingSafetensors


def old_write_shard(final: Path, tensors: dict, metadata: dict) -> tuple[str, int]:
    """The writer before this change (commit d85d687), inlined: the oracle for the bytes."""
    header: dict = {"__metadata__": dict(metadata)}
    offset, blobs = 0, []
    for name, t in tensors.items():
        blob = t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    final.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
    return sha256_file(final), final.stat().st_size


def mixed() -> dict[str, torch.Tensor]:
    """A shard's kinds of tensors, in no dtype order: fp32 (one non-contiguous), bf16, fp16, ints, bool, empty."""
    g = torch.Generator().manual_seed(0)
    return {
        "index": torch.arange(5, dtype=torch.int64),
        "prompt_embeds": torch.randn(5, 7, 12, generator=g),
        "pooled_prompt_embeds": torch.randn(12, 5, generator=g).t(),  # a transposed view: written contiguous
        "half": torch.randn(5, 3, generator=g).to(torch.bfloat16),
        "f16": torch.randn(5, 2, generator=g).to(torch.float16),
        "token_counts": torch.tensor([[1, 2]] * 5, dtype=torch.int32),
        "caption_sha256": torch.randint(0, 256, (5, 32), dtype=torch.uint8, generator=g),
        "mask": torch.rand(5, 4, generator=g) > 0.5,
        "ref_index": torch.zeros(0, dtype=torch.int64),
        "ref_caption_sha256": torch.zeros(0, 32, dtype=torch.uint8),
    }


META = {"sdclip_job": "ab" * 32, "start": "0", "stop": "5", "options": json.dumps({"k": "v ü"})}


def test_bytes_and_digest_equal_the_old_writer(tmp_path, monkeypatch):
    """Same bytes as before, and the digest is the final file's sha256 without the file being read back."""
    tensors = mixed()
    want = old_write_shard(tmp_path / "old.safetensors", tensors, META)

    def no_reread(path):  # noqa: ANN001, ANN202
        raise AssertionError(f"{path} was read back for its sha256")

    import sdclip.jobs.shards
    import sdclip.outputs

    for module in (sdclip.outputs, sdclip.jobs.shards):  # wherever a re-read would look it up
        monkeypatch.setattr(module, "sha256_file", no_reread, raising=False)
    got = write_shard(tmp_path / "new.safetensors", tensors, META)
    monkeypatch.undo()
    assert (tmp_path / "new.safetensors").read_bytes() == (tmp_path / "old.safetensors").read_bytes()
    assert got == want == (sha256_file(tmp_path / "new.safetensors"), (tmp_path / "new.safetensors").stat().st_size)
    back = load_file(tmp_path / "new.safetensors")
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    assert not list(tmp_path.glob(".*.tmp"))


def test_bytes_equal_safetensors_save_file_where_its_header_is_the_same(tmp_path):
    """safetensors orders tensors by alignment, then name, and writes one metadata key as given: tensors
    named in that order give its header, so its file is the oracle byte for byte."""
    g = torch.Generator().manual_seed(1)
    tensors = {"a": torch.arange(6, dtype=torch.int64), "b": torch.randn(3, 4, generator=g),
               "c": torch.zeros(0, 4), "d": torch.randn(3, 2, generator=g).to(torch.bfloat16),
               "e": torch.randint(0, 256, (3, 32), dtype=torch.uint8, generator=g)}
    save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"sdclip_job": "x"})
    digest, size = write_shard(tmp_path / "ours.safetensors", tensors, {"sdclip_job": "x"})
    theirs = (tmp_path / "theirs.safetensors").read_bytes()
    assert (tmp_path / "ours.safetensors").read_bytes() == theirs
    assert (digest, size) == (hashlib.sha256(theirs).hexdigest(), len(theirs))


def test_partial_os_writes_still_write_and_hash_every_byte(tmp_path, monkeypatch):
    """os.pwrite may write fewer bytes than asked: the rest follows, and the digest covers each byte once."""
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, at: real(fd, memoryview(data)[:777], at))
    tensors = mixed()
    got = write_shard(tmp_path / "new.safetensors", tensors, META)
    monkeypatch.undo()
    assert got == old_write_shard(tmp_path / "old.safetensors", tensors, META)


def test_writers_out_of_order_or_partial_get_the_file_digest(tmp_path):
    """`sdclip encode --out` fills each tensor batch by batch (not in file order): the digest is then read
    back; rows written in order in batches are hashed as written. Both equal the file's sha256."""
    tensors = mixed()
    specs = {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}
    for order in ("batches in order", "tensors reversed", "rows reversed", "one tensor never written"):
        path = tmp_path / f"{order}.safetensors"
        out = StreamingSafetensors(path, specs, META, hashed=True)
        names = list(tensors)[::-1] if order == "tensors reversed" else list(tensors)
        for name in names:
            t = tensors[name]
            if order == "one tensor never written" and name == "half":
                continue
            spans = [(0, 2), (2, t.shape[0])] if t.shape[0] > 2 else [(0, t.shape[0])]
            for lo, hi in spans[::-1] if order == "rows reversed" else spans:
                out.write(name, lo, t[lo:hi])
        out.close()
        assert out.sha256() == sha256_file(path), order
        back = load_file(path)
        assert torch.equal(back["prompt_embeds"], tensors["prompt_embeds"]), order
    assert load_file(tmp_path / "one tensor never written.safetensors")["half"].eq(0).all()
    unhashed = StreamingSafetensors(tmp_path / "plain.safetensors", specs, META)  # encode --out: no hashing asked
    for name, t in tensors.items():
        unhashed.write(name, 0, t)
    unhashed.close()
    assert unhashed.sha256() == sha256_file(tmp_path / "batches in order.safetensors")


WRITE_ONE = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from sdclip.jobs.shards import write_shard
    final = Path(sys.argv[1])
    try:
        write_shard(final, {"index": torch.arange(4), "prompt_embeds": torch.ones(4, 77, 768)}, {"sdclip_job": "x"})
    except OSError as exc:
        print(exc.errno, exc.filename)
    else:
        print("written")
""")


def check_full(run: subprocess.CompletedProcess, final: Path, codes: tuple[int, ...]) -> None:
    assert run.returncode == 0, run.stderr
    code, name = run.stdout.split()
    assert int(code) in codes and name == str(final), run.stdout
    assert not list(final.parent.iterdir()), "a temporary file was left behind"


def test_a_file_size_limit_is_one_oserror_naming_the_final_file(tmp_path):
    """The kernel refuses the bytes (RLIMIT_FSIZE, as a full disk): one OSError naming the shard, nothing left."""
    final = tmp_path / "out" / "shard-00000.safetensors"
    run = subprocess.run([sys.executable, "-c", WRITE_ONE, str(final)], capture_output=True, text=True,
                         preexec_fn=file_size_limit(100_000), timeout=120)
    check_full(run, final, (errno.EFBIG,))


def test_a_full_disk_mid_tensor_is_one_oserror_naming_the_final_file(tmp_path):
    """A real ENOSPC in the middle of a tensor's bytes: a 256 KiB tmpfs in a private mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    final = mnt / "shard-00000.safetensors"
    # the tmpfs lives as long as its namespace: what is left in it is listed from inside
    script = f'mount -t tmpfs -o size=256k tmpfs "{mnt}" || exit 3; "{sys.executable}" -c "$0" "{final}"; ls -A "{mnt}"'
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f'mount -t tmpfs tmpfs "{mnt}"'], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot mount a tmpfs in a user namespace here")
    run = subprocess.run(["unshare", "-rm", "sh", "-c", script, WRITE_ONE], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    code, name = run.stdout.split()[:2]
    assert int(code) == errno.ENOSPC and name == str(final), run.stdout
    assert run.stdout.split()[2:] == [], "a temporary file was left behind"


def resident_fraction(path: Path) -> float:
    """The share of a file's pages in the page cache (mincore on a read-only shared mapping: touches none)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    size, page = path.stat().st_size, mmap.PAGESIZE
    pages = (size + page - 1) // page
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        vec = (ctypes.c_ubyte * pages)()
        try:
            assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) == 0, ctypes.get_errno()
        finally:
            libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec) / pages


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and posix_fadvise as on Linux")
def test_a_written_shard_leaves_the_page_cache_other_outputs_stay(tmp_path):
    """Shards are bulk output nothing reads back soon: once on disk their pages are freed for the next shard
    (reused, not taken from elsewhere); an ordinary atomic output keeps its pages."""
    from sdclip.outputs import atomic_path

    t = {"prompt_embeds": torch.randn(64, 77, 320)}  # 6 MiB
    write_shard(tmp_path / "shard.safetensors", t, {"sdclip_job": "x"})
    with atomic_path(tmp_path / "kept.bin") as tmp:
        tmp.write_bytes(b"\1" * (6 << 20))
    kept = resident_fraction(tmp_path / "kept.bin")
    if kept < 0.9:
        pytest.skip(f"this filesystem does not keep written pages cached ({kept:.0%})")
    assert resident_fraction(tmp_path / "shard.safetensors") < 0.1
