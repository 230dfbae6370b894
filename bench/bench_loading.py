"""Loading: time and peak memory to get the text encoders out of a big single-file checkpoint.

The benchmark writes a checkpoint with random fp16 tensors of the real shapes — SDXL (ViT-L + bigG text
encoders, a UNet of SDXL's 2.57 B parameters, a VAE: ≈ 7 GB) or, with --quick, SD1 (ViT-L, an 860 M
UNet, ≈ 2 GB) — streamed to disk tensor by tensor (safetensors format: 8-byte header length, JSON
header, raw bytes), so writing it never holds the whole file in memory. Keys are spelled as real
single files spell them (`conditioner.embedders.0.transformer.text_model.…` transformers-4 keys,
`conditioner.embedders.1.model.…` open_clip keys; SD1 `cond_stage_model.transformer.…`).

Each measurement runs in a fresh Python process; peak memory is its `ru_maxrss` (resident pages, the
memory-mapped file's touched pages included), reported with the RSS after imports subtracted. Compared:

- sdclip `load_text_encoders(path, dtype=fp16)` (the file's dtype: no conversion) and fp32;
- the whole file read: every tensor through `safe_open(...).get_tensor` (as sdclip reads its own) with
  its pages touched — what a loader that materialises the state dict and then picks the text encoder
  keys pays before doing anything else (`load_file` alone maps the file lazily and would prove nothing).

The file is deleted afterwards (`--keep DIR` keeps it there for reruns).

    python bench/bench_loading.py [--quick] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, machine, md_table, write_json

# ---- the checkpoint ---------------------------------------------------------------------------------

TEXT = {  # (width, layers, mlp, projection) of the real towers
    "L": (768, 12, 3072, None),
    "G": (1280, 32, 5120, 1280),
}
UNET_PARAMS = {"sdxl": 2_567_463_684, "sd1": 859_520_964}
VAE_PARAMS = 83_653_863


def hf4_keys(prefix: str, width: int, layers: int, mlp: int) -> dict[str, tuple[int, ...]]:
    """transformers-4 CLIPTextModel keys (`text_model.…`) and shapes."""
    p = prefix + "text_model."
    keys = {p + "embeddings.token_embedding.weight": (49408, width), p + "embeddings.position_embedding.weight": (77, width),
            p + "final_layer_norm.weight": (width,), p + "final_layer_norm.bias": (width,)}
    for i in range(layers):
        b = f"{p}encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            keys[f"{b}self_attn.{name}.weight"] = (width, width)
            keys[f"{b}self_attn.{name}.bias"] = (width,)
        for ln in ("layer_norm1", "layer_norm2"):
            keys[f"{b}{ln}.weight"] = (width,)
            keys[f"{b}{ln}.bias"] = (width,)
        keys[f"{b}mlp.fc1.weight"], keys[f"{b}mlp.fc1.bias"] = (mlp, width), (mlp,)
        keys[f"{b}mlp.fc2.weight"], keys[f"{b}mlp.fc2.bias"] = (width, mlp), (width,)
    return keys


def open_clip_keys(prefix: str, width: int, layers: int, mlp: int, proj: int) -> dict[str, tuple[int, ...]]:
    """OpenAI / open_clip text keys: fused in_proj (q;k;v), text_projection stored [D, P]."""
    keys = {prefix + "token_embedding.weight": (49408, width), prefix + "positional_embedding": (77, width),
            prefix + "ln_final.weight": (width,), prefix + "ln_final.bias": (width,), prefix + "logit_scale": (),
            prefix + "text_projection": (width, proj)}
    for i in range(layers):
        b = f"{prefix}transformer.resblocks.{i}."
        keys[b + "attn.in_proj_weight"], keys[b + "attn.in_proj_bias"] = (3 * width, width), (3 * width,)
        keys[b + "attn.out_proj.weight"], keys[b + "attn.out_proj.bias"] = (width, width), (width,)
        for ln in ("ln_1", "ln_2"):
            keys[f"{b}{ln}.weight"] = (width,)
            keys[f"{b}{ln}.bias"] = (width,)
        keys[b + "mlp.c_fc.weight"], keys[b + "mlp.c_fc.bias"] = (mlp, width), (mlp,)
        keys[b + "mlp.c_proj.weight"], keys[b + "mlp.c_proj.bias"] = (width, mlp), (width,)
    return keys


def filler(prefix: str, params: int, tensor: int = 1280 * 1280) -> dict[str, tuple[int, ...]]:
    """UNet / VAE stand-ins: `params` parameters in [1280, k] tensors (real files have ~2,500 keys)."""
    keys, i = {}, 0
    while params > 0:
        n = min(tensor, params)
        keys[f"{prefix}{i}.weight"] = (n // 1280, 1280) if n >= 1280 else (n,)
        params -= (n // 1280) * 1280 if n >= 1280 else n
        i += 1
    return keys


def layout(family: str) -> dict[str, tuple[int, ...]]:
    if family == "sdxl":
        keys = hf4_keys("conditioner.embedders.0.transformer.", *TEXT["L"][:3])
        keys |= open_clip_keys("conditioner.embedders.1.model.", *TEXT["G"])
        keys |= filler("model.diffusion_model.blocks.", UNET_PARAMS["sdxl"])
    else:
        keys = hf4_keys("cond_stage_model.transformer.", *TEXT["L"][:3])
        keys |= filler("model.diffusion_model.blocks.", UNET_PARAMS["sd1"])
    return keys | filler("first_stage_model.blocks.", VAE_PARAMS)


def text_bytes(keys: dict[str, tuple[int, ...]]) -> int:
    return sum(2 * _numel(s) for k, s in keys.items() if k.startswith(("conditioner.", "cond_stage_model.")))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def write_checkpoint(path: Path, keys: dict[str, tuple[int, ...]]) -> int:
    """Stream a .safetensors file of random fp16 tensors (N(0, 0.02²), LayerNorm-like ones 1 ± 0.02)."""
    import torch

    header, offset = {}, 0
    for k, s in keys.items():
        size = 2 * _numel(s)
        header[k] = {"dtype": "F16", "shape": list(s), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    g = torch.Generator().manual_seed(0)
    # one random pool reused by slices: generating 3.5 G random numbers would dominate the benchmark
    pool = (torch.randn(8 << 20, generator=g) * 0.02).to(torch.float16)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for k, s in keys.items():
            n = _numel(s)
            start = int(torch.randint(0, pool.numel() // 2, (1,), generator=g))
            while n > 0:
                m = min(n, pool.numel() - start)
                t = pool[start : start + m]
                if "ln" in k.rsplit(".", 2)[-2] or "norm" in k:
                    t = t + 1
                f.write(t.numpy().tobytes())
                n -= m
                start = 0
    return path.stat().st_size


# ---- the measured processes -----------------------------------------------------------------------

CHILD = r"""
import json, resource, sys, time
import torch
sys.path.insert(0, sys.argv[3])
torch.set_num_threads(2)
what, path = sys.argv[1], sys.argv[2]
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if what.startswith("sdclip"):
    from sdclip.encoder import load_text_encoders
else:
    from safetensors import safe_open
base = rss()
t = time.perf_counter()
if what.startswith("sdclip"):
    dtype = {"sdclip-fp16": torch.float16, "sdclip-fp32": torch.float32}[what]
    loaded = load_text_encoders(path, dtype=dtype)
    n = sum(p.numel() * p.element_size() for e in loaded.encoders for p in e.state_dict().values())
    extra = {"family": loaded.family}
else:
    # every tensor read the same way sdclip reads its own (safe_open.get_tensor), and its pages touched:
    # safetensors maps the file lazily, so an untouched tensor would cost nothing and prove nothing
    with safe_open(path, framework="pt", device="cpu") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    for v in sd.values():
        v.reshape(-1)[::1024].float().sum()
    n = sum(v.numel() * v.element_size() for v in sd.values())
    extra = {"tensors": len(sd)}
sec = time.perf_counter() - t
print(json.dumps({"seconds": sec, "peak_rss": rss(), "base_rss": base, "result_bytes": n, **extra}))
"""


def measure(what: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, what, str(path), str(REPO / "src")],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def drop_page_cache(path: Path) -> bool:
    """Evict the file from the page cache (cold read), where the OS lets us."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return True
    except (OSError, AttributeError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="SD1-sized file (≈ 2 GB) instead of SDXL (≈ 7 GB)")
    ap.add_argument("--keep", type=Path, default=None, help="write/keep the checkpoint in this folder")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="loading is measured on the CPU")
    args = ap.parse_args()
    family = "sd1" if args.quick else "sdxl"
    keys = layout(family)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="sdclip-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{family}-random.safetensors"
    t0 = time.perf_counter()
    try:
        if not (args.keep and path.exists()):
            t = time.perf_counter()
            write_checkpoint(path, keys)
            print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s", flush=True)
        size = path.stat().st_size
        results = {}
        for what in ("sdclip-fp16", "sdclip-fp32", "whole-file"):
            for cache in ("cold", "warm"):
                if cache == "cold" and not drop_page_cache(path):
                    continue
                r = measure(what, path)
                results[f"{what} {cache}"] = r
                print(f"  {what} {cache}: {r}", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    text = text_bytes(keys)
    meta = machine("cpu") | {"family": family, "file_bytes": size, "text_encoder_bytes_fp16": text,
                             "tensors": len(keys), "seconds": time.perf_counter() - t0, "quick": args.quick}

    def gb(x: float) -> str:
        return f"{x / 1e9:.2f} GB"

    rows = []
    whole = results.get("whole-file warm", {})
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "error", r["error"], "", "", ""])
            continue
        delta = r["peak_rss"] - r["base_rss"]
        ratio_t = f"{r['seconds'] / whole['seconds']:.2f}" if whole.get("seconds") else "—"
        w_delta = whole.get("peak_rss", 0) - whole.get("base_rss", 0)
        ratio_m = f"{delta / w_delta:.2f}" if w_delta > 0 else "—"
        rows.append([name, f"{r['seconds']:.2f} s", gb(delta), gb(r["result_bytes"]), ratio_t, ratio_m])
    table = md_table(["load", "time", "peak RSS − RSS after imports", "tensors kept", "time ÷ whole file (warm)",
                      "memory ÷ whole file (warm)"], rows)
    print(f"\n{family.upper()}-sized single file: {gb(size)}, {len(keys)} tensors, text encoders {gb(text)} in fp16\n")
    print(table)
    path_json = write_json("loading", {"meta": meta, "results": results, "tables": {"loading": table}})
    print(f"\nwrote {path_json}")


if __name__ == "__main__":
    main()
