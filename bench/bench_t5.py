"""T5 encoder: rows/s against transformers' `T5EncoderModel`, and peak memory loading fp16 vs fp8 files.

Speed: T5-XXL width (d_model 4096, 64 heads of 64, gated-GELU d_ff 10240, vocab 32128) with fewer
layers (default 2, to fit memory; every layer costs the same, so rows/s scale as 1/layers), random
weights shared by both models, sequences of 256 (SD3's default), batch 2 (a prompt and its negative),
fp32 and bf16, best of a few runs on 2 threads. Results must agree (fp32 ≤ 1e-5 relative).

Loading: the same encoder saved as ComfyUI's bare-key `t5xxl_fp16.safetensors` and
`t5xxl_fp8_e4m3fn.safetensors`; each is loaded in a fresh process (`load_t5`, bf16 compute; fp8 kept
fp8) and runs one 256-token row; peak RSS (`VmHWM`, the mapped file's touched pages included) less
the RSS after imports, against the file's size.

    python bench/bench_t5.py [--layers 2] [--seq 256] [--batch 2] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import REPO, best_of, machine, md_table, setup, write_json

XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64, relative_attention_num_buckets=32,
           relative_attention_max_distance=128, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
           vocab_size=32128, dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)

CHILD = r"""
import json, sys, time
import torch
sys.path.insert(0, sys.argv[2])
torch.set_num_threads(2)
torch.set_grad_enabled(False)
from sdclip.encoder.loading.t5 import load_t5
def rss():  # VmHWM: this process's peak; ru_maxrss would carry the (big) parent's peak across exec
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
base = rss()
t = time.perf_counter()
enc = load_t5(sys.argv[1], dtype=torch.bfloat16)
sec = time.perf_counter() - t
after_load = rss()
held = sum(p.numel() * p.element_size() for p in enc.state_dict().values())
enc(torch.randint(0, 32128, (1, 256)))
print(json.dumps({"seconds": sec, "peak_load": after_load - base, "peak_run": rss() - base, "held_bytes": held}))
"""


def speed(layers: int, seq: int, batch: int) -> list[dict]:
    import torch
    from transformers import T5Config, T5EncoderModel

    from sdclip.encoder.loading.checkpoint import MemoryTensors
    from sdclip.encoder.loading.t5 import load_t5

    torch.manual_seed(0)
    ref = T5EncoderModel(T5Config(**XXL, num_layers=layers)).eval()
    ids = torch.randint(0, 32128, (batch, seq), generator=torch.Generator().manual_seed(0))
    rows = []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ref = ref.to(dtype)
        ours = load_t5(MemoryTensors(dict(ref.state_dict()), "<transformers>"), dtype=dtype)  # shares the tensors
        t_ref = best_of(lambda: ref(ids), repeats=2, budget_s=60)
        t_ours = best_of(lambda: ours(ids), repeats=2, budget_s=60)
        with torch.no_grad():
            a, b = ours(ids).float(), ref(ids).last_hidden_state.float()
        rel = float((a - b).norm() / b.norm())
        rows.append({"dtype": name, "layers": layers, "seq": seq, "batch": batch,
                     "transformers_rows_s": batch / t_ref, "sdclip_rows_s": batch / t_ours,
                     "speedup": t_ref / t_ours, "rel_diff": rel})
        del ours
    return rows


def memory(layers: int) -> list[dict]:
    import torch
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    model = T5EncoderModel(T5Config(**XXL, num_layers=layers)).eval()
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    del model
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cast in (("t5xxl_fp16.safetensors", lambda v: v.half()),
                           ("t5xxl_fp8_e4m3fn.safetensors",
                            lambda v: v.to(torch.float8_e4m3fn) if v.dim() == 2 else v.half())):
            path = Path(tmp) / name
            save_file({k: cast(v) for k, v in sd.items()}, str(path))
            r = subprocess.run([sys.executable, "-c", CHILD, str(path), str(REPO / "src")], capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(r.stderr)
            m = json.loads(r.stdout.strip().splitlines()[-1])
            size = path.stat().st_size
            out.append({"file": name, "file_bytes": size, **m, "load_peak_x_file": m["peak_load"] / size,
                        "run_peak_x_file": m["peak_run"] / size})
            path.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="measure loading only (keeps earlier speed rows)")
    args = ap.parse_args()
    setup()
    if args.memory_only:
        import json as _json

        from _common import RESULTS

        rows = _json.loads((RESULTS / "t5.json").read_text())["speed"]
    else:
        rows = speed(args.layers, args.seq, args.batch)
    print(md_table(["dtype", "transformers rows/s", "sdclip rows/s", "speed-up", "rel. diff"],
                   [[r["dtype"], r["transformers_rows_s"], r["sdclip_rows_s"], f"{r['speedup']:.2f}×",
                     f"{r['rel_diff']:.1e}"] for r in rows]))
    mem = [] if args.skip_memory else memory(args.layers)
    if mem:
        gb = lambda x: f"{x / 2**30:.2f} GB"  # noqa: E731
        print(md_table(["file", "size", "peak loading", "× file", "peak after a pass", "× file", "held"],
                       [[m["file"], gb(m["file_bytes"]), gb(m["peak_load"]), f"{m['load_peak_x_file']:.2f}",
                         gb(m["peak_run"]), f"{m['run_peak_x_file']:.2f}", gb(m["held_bytes"])] for m in mem]))
    write_json("t5", {"machine": machine(), "speed": rows, "memory": mem,
                      "note": f"T5-XXL width, {args.layers} of 24 layers; rows/s of a full model ≈ these × {args.layers}/24"})


if __name__ == "__main__":
    main()
