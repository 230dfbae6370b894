"""Shared helpers for the bench/ scripts: threads, device sync, best-of timing, machine facts, output.

Benchmarks are plain scripts (never timed unit tests). Each prints a markdown table and writes its raw
numbers to bench/results/NAME.json; bench/run.py runs them all and merges the tables.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
# the random-weight model builders and the offline tokenizer writer live with the tests
sys.path.insert(0, str(REPO / "tests"))

THREADS = 2  #: the machine the goals are stated for has 2 cores; never use more than it has


def setup(device: str = "cpu") -> None:
    """Fixed thread count (the goals are per 2 cores), no autograd, quiet transformers."""
    import torch

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(min(THREADS, os.cpu_count() or THREADS))
    torch.set_grad_enabled(False)
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def best_of(fn: Callable[[], object], device: str = "cpu", repeats: int = 3, warmup: int = 1,
            budget_s: float | None = None) -> float:
    """Best wall time of `repeats` calls after `warmup` untimed ones. Best-of, not mean: on a shared
    machine the minimum is the run least disturbed by other processes. `budget_s` stops repeating once
    that much time was spent (large models: one long run already averages itself)."""
    for _ in range(warmup):
        fn()
        sync(device)
    best, spent = float("inf"), 0.0
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        sync(device)
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
        if budget_s is not None and spent >= budget_s:
            break
    return best


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5, device: str = "cpu") -> dict[str, dict]:
    """Median wall and CPU (`time.process_time`: every thread of this process) seconds of each function,
    called in turn `repeats` times (a, b, c, a, b, c, ...): on a machine shared with other work, both sides
    see the same load, and the CPU time is the figure least moved by it. Warm the functions up first."""
    import statistics

    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    return {k: {"wall": statistics.median(wall[k]), "cpu": statistics.median(cpu[k]), "wall_all": wall[k],
                "cpu_all": cpu[k]} for k in fns}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if m:
            return m.group(1).strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    """The commit measured, "+src changes" when src/ differs from it (a shared tree: others edit it meanwhile)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" +src changes" if dirty else "")


def machine(device: str = "cpu") -> dict:
    """What the numbers were measured on."""
    import torch

    info = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "commit": commit(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_json(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A markdown table; `align` is one char per column ('l' or 'r'), default first left, rest right."""
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, float):
        if v >= 100:
            return f"{v:,.0f}"
        if v >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}"
    return str(v)


def dtype_of(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


#: the benchmarks' short names of the towers in sdclip.conventions.family
TOWER_OF = {"L": "clip-vit-l-14", "H": "openclip-vit-h-14", "G": "openclip-vit-bigg-14"}


def real_hf_model(role: str, dtype_name: str = "fp32", device: str = "cpu", seed: int = 0):
    """A transformers CLIP text model of the real ViT-L / ViT-H / bigG shape (role L, H or G), random weights."""
    from tiny_models import REAL, tiny_model

    model = tiny_model(TOWER_OF[role], seed=seed, sizes=REAL)
    return model.to(device=device, dtype=dtype_of(dtype_name)).eval().requires_grad_(False)


def clip_tokenizer(pad: str = "<|endoftext|>"):
    """transformers' CLIPTokenizer (the Rust one in transformers 5) from the packaged vocabulary, offline."""
    import tempfile

    from tiny_models import write_tokenizer
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(str(write_tokenizer(Path(tmp) / "tok", pad)))
