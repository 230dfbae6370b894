"""The LLM loader's finite check costs no whole-tensor float32 copy (issue 22: Qwen-Image's bf16 loading peak
was 1.30× the file's bytes): a real safetensors file read by `read_checked` in a fresh process, its resident
peak (VmHWM, reset after the imports) measured as bench/bench_llm.py measures it. Memory, not time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak reset")

PEAK = r"""
import json, sys, torch
from sdclip.encoder.loading.llm import read_checked
from sdclip.encoder.loading.t5 import PlainSafetensors
def hwm():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
fh = PlainSafetensors(sys.argv[1])
open("/proc/self/clear_refs", "w").write("5")
before = hwm()
t = read_checked(fh, "w")
print(json.dumps({"rise": hwm() - before, "dtype": str(t.dtype)}))
"""


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_tensor_read_without_a_float32_copy(tmp_path: Path, dtype: torch.dtype) -> None:
    w = torch.randn(4096, 4096).to(dtype)  # 32 MiB stored; a whole float32 copy would be 64 MiB more
    path = tmp_path / "te.safetensors"
    save_file({"w": w}, str(path))
    out = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, timeout=120,
                         check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["dtype"] == str(dtype)  # stored dtype kept
    # the tensor itself and slack (threads, reads), no temporary: the whole float32 copy once cost 3× the stored bytes,
    # then a chunked sum's 8 MiB float32 temporary whose frees fragmented the heap (a loading peak varying 1.04-1.14)
    assert got["rise"] <= w.numel() * w.element_size() + (4 << 20), got  # old: + 9.4 MiB, now + 1.5


def test_non_finite_still_refused_in_any_chunk(tmp_path: Path) -> None:
    from sdclip.encoder.loading.checkpoint import CheckpointError
    from sdclip.encoder.loading.llm import read_checked
    from sdclip.encoder.loading.t5 import PlainSafetensors

    w = torch.zeros(3 << 20, dtype=torch.bfloat16)
    w[-1] = float("inf")  # in the last chunk
    save_file({"w": w}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        read_checked(PlainSafetensors(tmp_path / "bad.safetensors"), "w")
