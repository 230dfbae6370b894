"""A safetensors file written batch by batch: the header is known before the first row is encoded (every
shape follows from `prepare`), each batch's rows go straight to their place in the file, and memory holds one
batch — a 100,000-prompt file no longer holds every row in memory. Written through `sdclip.outputs.atomic_path`.

Format (safetensors' own spec): 8-byte little-endian header length, the JSON header (padded with spaces to a
multiple of 8), then each tensor's bytes at its `data_offsets`, contiguous and in header order.
"""

from __future__ import annotations

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

    def __init__(self, path: Path, specs: Mapping[str, tuple[torch.dtype, tuple[int, ...]]], metadata: Mapping[str, str]):
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
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:  # a full disk can fail the header already: the descriptor is not leaked
            self._pwrite_all(struct.pack("<Q", len(raw)) + raw, 0)
            os.ftruncate(self._fd, self._data_start + offset)
        except BaseException:
            os.close(self._fd)
            raise

    def write(self, name: str, start: int, rows: torch.Tensor) -> None:
        dtype, shape = self.specs[name]
        if rows.dtype != dtype or tuple(rows.shape[1:]) != tuple(shape[1:]) or start + rows.shape[0] > shape[0]:
            raise ValueError(f"{name}: rows {rows.dtype} {list(rows.shape)} at {start} do not fit {dtype} {list(shape)}")
        data = rows.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()
        self._pwrite_all(data, self._data_start + self._offsets[name] + start * self._row_bytes[name])

    def _pwrite_all(self, data: bytes, at: int) -> None:
        """Every byte at its offset (os.pwrite may write fewer; a full disk raises OSError ENOSPC)."""
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, at)
            view, at = view[n:], at + n

    def close(self) -> None:
        os.close(self._fd)


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
