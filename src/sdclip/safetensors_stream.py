"""A safetensors file written batch by batch: the header is known before the first row is encoded (every
shape follows from `prepare`), each batch's rows go straight to their place in the file, and memory holds one
batch — a 100,000-prompt file no longer holds every row in memory. Written through `sdclip.outputs.atomic_path`.

Format (safetensors' own spec): 8-byte little-endian header length, the JSON header (padded with spaces to a
multiple of 8), then each tensor's bytes at its `data_offsets`, contiguous and in header order.

Bytes go from the tensor's own memory to the file (no copy), and with `hashed=True` the file's sha256 is
taken from them as they are written, when every write continues where the last ended (`write_shard`); a
writer that fills the file in another order (`sdclip encode --out`, batch by batch per tensor) gets it by
re-reading the file. The copy and the re-read cost ~0.5 ms of the writer's CPU per SD3 row (512 KiB).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import torch

#: torch dtype → safetensors dtype name
DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
          torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


class StreamingSafetensors:
    """Tensors of known dtype and shape [B, ...], filled along their first axis by `write(name, start, rows)`."""

    def __init__(self, path: Path, specs: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
                 metadata: Mapping[str, str], hashed: bool = False):
        self.path = Path(path)
        self.specs = dict(specs)
        header: dict = {"__metadata__": dict(metadata)}
        offset = 0
        self._offsets: dict[str, int] = {}
        self._row_bytes: dict[str, int] = {}
        for name, (dtype, shape) in self.specs.items():
            item = torch.empty((), dtype=dtype).element_size()
            size = item * _prod(shape)
            header[name] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._offsets[name] = offset
            self._row_bytes[name] = item * _prod(shape[1:])
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._data_start = 8 + len(raw)
        self._size = self._data_start + offset
        #: the sha256 of the file's bytes [0, _hashed_to) while every write has continued the last; None once not
        self._hash = hashlib.sha256() if hashed else None
        self._hashed_to = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:  # a full disk can fail the header already: the descriptor is not leaked
            self._pwrite_all(memoryview(struct.pack("<Q", len(raw)) + raw), 0)
            os.ftruncate(self._fd, self._size)
        except BaseException:
            os.close(self._fd)
            raise

    def write(self, name: str, start: int, rows: torch.Tensor) -> None:
        dtype, shape = self.specs[name]
        if rows.dtype != dtype or tuple(rows.shape[1:]) != tuple(shape[1:]) or start + rows.shape[0] > shape[0]:
            raise ValueError(f"{name}: rows {rows.dtype} {list(rows.shape)} at {start} do not fit {dtype} {list(shape)}")
        # the tensor's own bytes, flat (bf16 has no numpy dtype: seen as uint8); no copy for a contiguous CPU tensor
        data = memoryview(rows.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        self._pwrite_all(data, self._data_start + self._offsets[name] + start * self._row_bytes[name])

    def _pwrite_all(self, data: memoryview, at: int) -> None:
        """Every byte at its offset (os.pwrite may write fewer; a full disk raises OSError ENOSPC), then hashed
        if it continues the bytes hashed so far (hashlib releases the GIL for large buffers)."""
        view, pos = data, at
        while view:
            n = os.pwrite(self._fd, view, pos)
            view, pos = view[n:], pos + n
        if self._hash is not None and data.nbytes:
            if at == self._hashed_to:
                self._hash.update(data)
                self._hashed_to += data.nbytes
            else:  # out of order: only a re-read of the whole file gives its digest
                self._hash = None

    def sha256(self) -> str:
        """The file's sha256 (call once every row is written): from the bytes as written when they were written
        in order and cover the file, else read back (also when the writer was made without `hashed`)."""
        if self._hash is not None and self._hashed_to == self._size:
            return self._hash.hexdigest()
        from sdclip.outputs import sha256_file

        return sha256_file(self.path)

    def close(self) -> None:
        os.close(self._fd)


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
