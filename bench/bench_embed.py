"""`sdclip embed` throughput: captions/s against a plain loop over diffusers' `encode_prompt` (what a trainer's
caching script does), the cost of resume bookkeeping, and the Ray engine (1 and 2 workers) against local.

Models: random weights at the real widths (ViT-L 768 for SD1; ViT-L 768 + bigG 1280 for SDXL) but only
LAYERS transformer layers each (time-boxed run: per-caption encoder cost is LAYERS/12 resp. LAYERS/32 of the
real one, so the fixed per-caption costs — tokenizing, validation, writing — weigh more here than they would
with real depth). Unique captions (no dedup advantage). Both sides: same text encoders, batch size BATCH.
The sdclip time is the whole command (model load, validation scan, encoding, shard writes, manifest).

    python bench/bench_embed.py [--captions 192] [--layers 4]
    python bench/bench_embed.py --memory 1000,100000      # peak RSS of the whole command, a process per run
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import _common as C

BATCH = 32


def captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ("a photo of", "a painting of", "portrait", "red", "blue", "fox", "cat", "castle", "forest", "river",
             "golden hour", "highly detailed", "misty", "mountain", "city at night", "(sharp focus:1.2)",
             "watercolor", "wide angle", "bokeh", "studio lighting", "old man", "young woman", "dog", "boat")
    return [f"{i}, " + ", ".join(rng.choice(words) for _ in range(rng.randint(6, 16))) for i in range(n)]


def build_pipeline(family: str, layers: int, dtype: str):  # noqa: ANN201
    import torch
    from tiny_models import REAL, tiny_model
    from tiny_pipelines import _scheduler, _unet, _vae  # noqa: PLC2701 - the tests' smallest UNet/VAE
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    sizes = {k: {**v, "num_hidden_layers": layers} for k, v in REAL.items()}
    L = tiny_model("clip-vit-l-14", sizes=sizes)
    if family == "sd1":
        pipe = StableDiffusionPipeline(vae=_vae(), text_encoder=L, tokenizer=C.clip_tokenizer(),
                                       unet=_unet(L.config.hidden_size), scheduler=_scheduler(),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        G = tiny_model("openclip-vit-bigg-14", sizes=sizes)
        pipe = StableDiffusionXLPipeline(vae=_vae(), text_encoder=L, text_encoder_2=G, tokenizer=C.clip_tokenizer(),
                                         tokenizer_2=C.clip_tokenizer("!"),
                                         unet=_unet(L.config.hidden_size + G.config.hidden_size,
                                                    G.config.projection_dim),
                                         scheduler=_scheduler(), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=C.dtype_of(dtype))


def plain_loop(pipe, caps: list[str]) -> float:  # noqa: ANN001
    """captions/s of `pipe.encode_prompt` over batches (no guidance: positives only, as a trainer caches)."""
    import torch

    t = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(caps), BATCH):
            pipe.encode_prompt(prompt=caps[lo : lo + BATCH], device="cpu", num_images_per_prompt=1,
                               do_classifier_free_guidance=False)
    return len(caps) / (time.perf_counter() - t)


def sdclip_embed(model: Path, caps_file: Path, out: Path, *extra: str) -> float:
    from sdclip.cli.main import main

    t = time.perf_counter()
    rc = main(["embed", "--model", str(model), "--captions", str(caps_file), "--out", str(out),
               "--batch-size", str(BATCH), *extra])
    assert rc == 0
    return time.perf_counter() - t


def engine_loop(model: Path, dtype: str, caps: list[str]) -> float:
    """captions/s of the engine's inner loop (CaptionEncoder.encode: prepare, encode, fit to N), model loaded."""
    from dataclasses import asdict

    from sdclip.conventions.presets import Options
    from sdclip.jobs.encode import CaptionEncoder
    from sdclip.jobs.plan import JobSpec

    spec = JobSpec(model=str(model), captions="", out="", options=asdict(Options.preset("diffusers")),
                   batch_size=BATCH, dtype=dtype)
    enc = CaptionEncoder(spec)
    enc.encode([f"warm-up {c}" for c in captions(BATCH, seed=1)])  # other captions: no row-cache hits below
    t = time.perf_counter()
    enc.encode(caps)
    return len(caps) / (time.perf_counter() - t)


def family_ratio(family: str, root: Path, caps: list[str], caps_file: Path) -> dict:
    """Whole `sdclip embed` rows/s ÷ sdclip's bare encoder rows/s (the Conditioner on the same batches), one
    family, the tests' tiny models (tests/tiny_*: T5 384 wide, 2 layers; umT5 / LLM 32–64 wide)."""
    import torch

    from sdclip.conditioner import Conditioner
    from test_embed_families import build

    folder = build(root, family) if not (root / family).exists() else root / family
    t = time.perf_counter()
    cond = Conditioner.from_pretrained(folder, "diffusers")
    load = time.perf_counter() - t
    bare_s, secs = float("inf"), float("inf")
    for rep in range(2):  # interleaved, best of 2 each: the machine is shared, its minimum is the least disturbed
        cond.cache.clear() if hasattr(cond.cache, "clear") else None
        with torch.no_grad():
            cond.encode([f"warm-up {rep}"])
            t = time.perf_counter()
            for lo in range(0, len(caps), BATCH):
                cond.encode([f"{rep} {c}" for c in caps[lo : lo + BATCH]])
            bare_s = min(bare_s, time.perf_counter() - t)
        secs = min(secs, sdclip_embed(folder, caps_file, root / f"ratio-{family}-{rep}", "--preset", "diffusers",
                                      "--shard-size", "64"))
    bare = len(caps) / bare_s
    whole = len(caps) / secs
    steady = len(caps) / max(secs - load, 1e-9)
    return {"family": family, "bare_rows_s": bare, "embed_rows_s": whole, "embed_rows_s_without_load": steady,
            "load_s": load, "ratio": whole / bare, "ratio_without_load": steady / bare}


#: real shapes (the released models' widths and default lengths) for the bytes-per-caption table
REAL_SHAPES = {"sd3": {"targets": (77, 256), "widths": [768, 1280, 4096], "pooled": 2048, "roles": 3},
               "flux": {"targets": (512,), "widths": [768, 4096], "pooled": 768, "roles": 2},
               "wan": {"targets": (512,), "widths": [4096], "pooled": None, "roles": 1}}


def bytes_per_caption(family: str, root: Path, n: int = 8, tokens: int = 40) -> dict[str, float]:
    """Bytes on disk per caption at bf16, real widths, a `tokens`-token caption: sdclip's shards (padded and
    --varlen) and each trainer format that holds the family (its own writer, sdclip.jobs.formats)."""
    import torch

    from sdclip.jobs.formats import FORMATS
    from sdclip.jobs.formats.base import RowContext
    from sdclip.jobs.shards import write_shard
    from sdclip.jobs.varlen import pack

    shape = REAL_SHAPES[family]
    N, D = sum(shape["targets"]), 4096
    g = torch.Generator().manual_seed(0)
    e = torch.randn(n, N, D, generator=g).to(torch.bfloat16)
    if family == "wan":
        e[:, tokens:] = 0  # zeros after the prompt, as the pipeline returns them
    counts = torch.tensor([[tokens] * shape["roles"]] * n, dtype=torch.int32)
    tensors = {"prompt_embeds": e, "token_counts": counts}
    if shape["pooled"]:
        tensors["pooled_prompt_embeds"] = torch.randn(n, shape["pooled"], generator=g).to(torch.bfloat16)
    out: dict[str, float] = {}
    folder = root / f"bytes-{family}"
    folder.mkdir(parents=True, exist_ok=True)
    index = {"index": torch.arange(n), "caption_sha256": torch.zeros(n, 32, dtype=torch.uint8)}
    _, size = write_shard(folder / "padded.safetensors", {**index, **tensors}, {})
    out["sdclip"] = size / n
    _, size = write_shard(folder / "varlen.safetensors", {**index, **pack(tensors)}, {})
    out["sdclip --varlen"] = size / n
    images = folder / "images"
    images.mkdir(exist_ok=True)
    for name, fmt in FORMATS.items():
        if family not in fmt.families:
            continue
        ctx = RowContext(family, shape["widths"], shape["targets"], images, folder / name,
                         [f"img{i}.png" for i in range(n)], [f"caption {i}" for i in range(n)], tensors)
        written = fmt.write(ctx)
        base = fmt.root_of(images, folder / name)
        out[name] = sum((base / rel).stat().st_size for rel in written) / n
    return out


#: the memory check's families: CLIP (SD1) and a T5 family (Wan: --varlen keeps 100k rows' files small)
MEMORY_RUNS = {"sd1": (), "wan": ("--varlen",)}


def peak_rss_mib(model: Path, caps_file: Path, out: Path, *extra: str) -> dict:
    """One `sdclip embed` in a fresh process: its own peak RSS (ru_maxrss of RUSAGE_SELF, read by that process
    as it ends: nothing else ran in it) and its wall time."""
    import os
    import subprocess
    import sys

    code = ("import resource, sys\nfrom sdclip.cli.main import main\nrc = main(sys.argv[1:])\n"
            "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(C.REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(C.THREADS)}
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code, "embed", "--model", str(model), "--captions", str(caps_file),
                          "--out", str(out), "--preset", "diffusers", "--batch-size", str(BATCH), *extra],
                         capture_output=True, text=True, env=env, check=False)
    secs = time.perf_counter() - t
    if run.returncode != 0:
        raise RuntimeError(f"sdclip embed failed: {run.stderr.strip()[-500:]}")
    kib = int(next(line.split()[1] for line in run.stdout.splitlines() if line.startswith("PEAK_KIB")))
    return {"peak_mib": kib / 1024, "seconds": secs}


def memory(sizes: tuple[int, ...] = (1_000, 100_000), families: tuple[str, ...] = tuple(MEMORY_RUNS)) -> dict:
    """Peak RSS of the whole `sdclip embed` on n captions (unique, and with repeats: every caption 4 times)
    per family, the tests' tiny models: flat in n means nothing kept per caption grows (the scan's per-row
    numbers, 28 bytes a caption, memory-mapped, are the one O(n) part: 2.8 MB at 100k)."""
    import shutil
    import sys

    sys.path.insert(0, str(C.REPO / "tests" / "jobs"))
    from test_embed_families import build
    from tiny_models import tiny_family, write_layout

    raw: dict = {"machine": C.machine(), "batch": BATCH, "runs": []}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for family in families:
            model = (write_layout("single.safetensors", tiny_family("sd1"), tmp / family) if family == "sd1"
                     else build(tmp, family))
            for kind in ("unique", "repeats"):
                for n in sizes:
                    caps = captions(n) if kind == "unique" else [c for c in captions(n // 4) for _ in range(4)]
                    caps_file = tmp / f"caps-{n}.txt"
                    caps_file.write_text("".join(c + "\n" for c in caps))
                    out = tmp / f"out-{family}-{kind}-{n}"
                    r = peak_rss_mib(model, caps_file, out, *MEMORY_RUNS[family])
                    r.update(family=family, captions=n, kind=kind,
                             shard_bytes=sum(p.stat().st_size for p in out.glob("shard-*.safetensors")))
                    raw["runs"].append(r)
                    rows.append([family, kind, n, f"{r['peak_mib']:.0f} MiB", f"{r['seconds']:.0f} s",
                                 f"{r['shard_bytes'] / 1e6:.1f} MB"])
                    print(rows[-1], flush=True)
                    shutil.rmtree(out)
    print(C.md_table(["family", "captions", "n", "peak RSS", "wall", "shards on disk"], rows))
    print("wrote", C.write_json("embed_memory", raw))
    return raw


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captions", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--families", default="sd1,sdxl", help="comma-separated (real depth: sd1 only is quick enough)")
    ap.add_argument("--only-families", action="store_true",
                    help="only the per-family ratio and bytes-per-caption tables (issue 21)")
    ap.add_argument("--ratio-families", default="sd3,flux,chroma,wan,qwen-image,z-image")
    ap.add_argument("--memory", default="", metavar="N,M",
                    help="only the peak-RSS check: `sdclip embed` on N vs M captions, a process each (e.g. 1000,100000)")
    ap.add_argument("--memory-families", default=",".join(MEMORY_RUNS))
    args = ap.parse_args()
    C.setup()
    import sys

    if args.memory:
        memory(tuple(int(n) for n in args.memory.split(",")), tuple(args.memory_families.split(",")))
        return

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "jobs"))
    if args.only_families:
        return families_only(args)
    caps = captions(args.captions)
    rows, raw = [], {"machine": C.machine(), "captions": args.captions, "layers": args.layers, "batch": BATCH,
                     "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        caps_file = tmp / "caps.txt"
        caps_file.write_text("".join(c + "\n" for c in caps))
        chosen = args.families.split(",")
        for family, dtype in [(f, d) for f in ("sd1", "sdxl") if f in chosen for d in ("fp32", "bf16")]:
            pipe = build_pipeline(family, args.layers, dtype)
            folder = tmp / f"{family}-{dtype}"
            pipe.save_pretrained(folder)
            plain_loop(pipe, caps[:BATCH])  # warm-up
            base = plain_loop(pipe, caps)
            secs = sdclip_embed(folder, caps_file, tmp / f"out-{family}-{dtype}", "--dtype", dtype,
                                "--preset", "diffusers", "--shard-size", "64")
            ours = len(caps) / secs
            inner = engine_loop(folder, dtype, caps)
            run = {"family": family, "dtype": dtype, "encode_prompt_cps": base, "sdclip_embed_cps": ours,
                   "sdclip_engine_loop_cps": inner, "speedup_whole": ours / base, "speedup_loop": inner / base}
            raw["runs"].append(run)
            rows.append([family, dtype, base, ours, inner, f"{ours / base:.2f}×", f"{inner / base:.2f}×"])
            print(rows[-1], flush=True)
            del pipe
        print(C.md_table(["family", "dtype", "diffusers encode_prompt loop (captions/s)",
                          "sdclip embed, whole command (captions/s)", "sdclip engine loop (captions/s)",
                          "speed-up (whole)", "speed-up (loop)"], rows))

        # resume bookkeeping: many small shards vs one shard, and a no-op re-run of a finished job
        model = tmp / "sd1-fp32"
        one = sdclip_embed(model, caps_file, tmp / "one-shard", "--shard-size", str(10**9))
        many = sdclip_embed(model, caps_file, tmp / "many-shards", "--shard-size", "16")
        noop = sdclip_embed(model, caps_file, tmp / "many-shards", "--shard-size", "16")
        raw["bookkeeping"] = {"one_shard_s": one, "shards_of_16_s": many, "overhead": many / one - 1,
                              "noop_rerun_s": noop}
        print(C.md_table(["job", "seconds"], [["1 shard", one], [f"{-(-len(caps) // 16)} shards of 16", many],
                                              ["re-run of the finished job (verify + nothing to do)", noop]]))

        if not args.no_ray:
            ray_rows = [["local", len(caps) / sdclip_embed(model, caps_file, tmp / "r-local", "--shard-size", "32")]]
            for w in (1, 2):
                s = sdclip_embed(model, caps_file, tmp / f"r-ray{w}", "--shard-size", "32", "--engine", "ray",
                                 "--workers", str(w))
                ray_rows.append([f"ray, {w} worker(s)", len(caps) / s])
            raw["ray"] = {name: cps for name, cps in ray_rows}
            print(C.md_table(["engine (SD1 fp32, whole command incl. Ray start)", "captions/s"], ray_rows))
    print("wrote", C.write_json("embed", raw))


def families_only(args) -> None:  # noqa: ANN001
    """Issue 21's measures, one run side by side: whole-command ÷ bare-encoder rows/s per family (tiny test
    models), and bytes per caption at bf16 for SD3 / Flux / Wan per format (real widths)."""
    from sdclip.conventions.family import FAMILIES

    caps = captions(args.captions)
    raw = {"machine": C.machine(), "captions": args.captions, "batch": BATCH, "ratio": [], "bytes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        caps_file = tmp / "caps.txt"
        caps_file.write_text("".join(c + "\n" for c in caps))
        rows = []
        for family in args.ratio_families.split(","):
            if family not in FAMILIES:
                continue
            r = family_ratio(family, tmp, caps, caps_file)
            raw["ratio"].append(r)
            rows.append([family, r["bare_rows_s"], r["embed_rows_s"], r["embed_rows_s_without_load"],
                         f"{r['ratio']:.2f}", f"{r['ratio_without_load']:.2f}"])
            print(rows[-1], flush=True)
        print(C.md_table(["family", "bare encoder (rows/s)", "sdclip embed whole command (rows/s)",
                          "whole command less model load (rows/s)", "ratio", "ratio less load"], rows))
        brows = []
        for family in REAL_SHAPES:
            b = bytes_per_caption(family, tmp)
            raw["bytes"][family] = b
            brows += [[family, name, f"{v / 1e6:.3f} MB"] for name, v in b.items()]
        print(C.md_table(["family", "format (bf16, 40-token caption, real widths)", "bytes / caption"], brows))
    print("wrote", C.write_json("embed_families", raw))


if __name__ == "__main__":
    main()
