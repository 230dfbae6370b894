"""Would `torch.compile` close the encoder's gap to the roofline? One side-by-side measurement.

Not part of bench/run.py: it needs a C++ compiler and spends tens of seconds compiling. It answers one
design question (README, "Against the goals"): whether inductor's fused kernels beat sdclip's eager path.
ViT-L (or --role H/G) at one batch size, fp32 and bf16: the roofline of bench_encoder.py, sdclip as
loaded and with packed weights, and both sdclip's encoder and transformers' CLIPTextModel compiled
(inductor with freezing and weight prepacking, the settings for inference). Interleaved rounds, best of
each.

    python bench/bench_compile.py [--role L] [--batch 8] [--dtypes fp32,bf16]
"""

from __future__ import annotations

import argparse
import time

from _common import best_of, dtype_of, machine, real_hf_model, setup, write_json
from bench_encoder import Roofline, sample_ids


def measure(role: str, dt: str, batch: int, rounds: int = 4) -> dict:
    import torch
    import torch._inductor.config as inductor

    from sdclip.encoder import encoders_from_modules

    inductor.freezing = True
    inductor.cpp.weight_prepack = True
    hf = real_hf_model(role, "fp32", "cpu").to(dtype_of(dt)).eval()
    cfg = hf.config
    ids = sample_ids(batch, "cpu")
    ours = encoders_from_modules((hf,)).encoders[0]
    packed = encoders_from_modules((hf,)).encoders[0].pack_weights()
    t0 = time.perf_counter()
    hf_compiled = torch.compile(hf)
    hf_compiled(input_ids=ids)
    ours_compiled = torch.compile(encoders_from_modules((hf,)).encoders[0])
    ours_compiled(ids)
    compile_s = time.perf_counter() - t0
    roofline = Roofline(cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, batch, dt, "cpu")
    runs = {
        "sdclip": lambda: ours(ids),
        "sdclip packed": lambda: packed(ids),
        "sdclip compiled": lambda: ours_compiled(ids),
        "transformers compiled": lambda: hf_compiled(input_ids=ids),
    }
    packed(ids)
    best = {name: float("inf") for name in ["roofline", *runs]}
    for _ in range(rounds):
        best["roofline"] = min(best["roofline"], roofline.time())
        for name, fn in runs.items():
            best[name] = min(best[name], best_of(fn, "cpu", repeats=1))
    return {"role": role, "dtype": dt, "batch": batch, "compile_seconds": compile_s,
            "rows_per_s": {k: batch / v for k, v in best.items()},
            "roofline_fraction": {k: best["roofline"] / v for k, v in best.items() if k != "roofline"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", default="L", choices=("L", "H", "G"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtypes", default="fp32,bf16")
    args = ap.parse_args()
    setup("cpu")
    results = [measure(args.role, dt, args.batch) for dt in args.dtypes.split(",")]
    for r in results:
        print(f"{r['role']} {r['dtype']} batch {r['batch']} (compile {r['compile_seconds']:.0f} s): " + ", ".join(
            f"{k} {v:.0%}" for k, v in r["roofline_fraction"].items()) + " of the roofline")
    print(f"wrote {write_json('compile', {'meta': machine('cpu'), 'results': results})}")


if __name__ == "__main__":
    main()
