"""`sdclip embed` throughput: captions/s against a plain loop over diffusers' `encode_prompt` (what a trainer's
caching script does), the cost of resume bookkeeping, and the Ray engine (1 and 2 workers) against local.

Models: random weights at the real widths (ViT-L 768 for SD1; ViT-L 768 + bigG 1280 for SDXL) but only
LAYERS transformer layers each (time-boxed run: per-caption encoder cost is LAYERS/12 resp. LAYERS/32 of the
real one, so the fixed per-caption costs — tokenizing, validation, writing — weigh more here than they would
with real depth). Unique captions (no dedup advantage). Both sides: same text encoders, batch size BATCH.
The sdclip time is the whole command (model load, validation scan, encoding, shard writes, manifest).

    python bench/bench_embed.py [--captions 192] [--layers 4]
    python bench/bench_embed.py --only-families [--ratio-families sd1,sdxl,sd3,flux,wan] [--captions 256]
    python bench/bench_embed.py --only-families --ratio-width real [--ratio-layers 1]
        [--ratio-families sd1,sdxl,sd3,flux,wan,chroma] [--captions N --shard-size S --ratio-batch B] [--repeats 1]
        # the same ratio at the released widths, N layers deep (real_model; per-family sizes in REAL_RUNS)
    python bench/bench_embed.py --trainers sd3,flux [--trainer-captions 6 --trainer-batch 2]
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


def family_model(family: str, root: Path) -> Path:
    """A diffusers folder of the family with the tests' tiny random text encoders (tests/tiny_*: CLIP 32–64
    wide, T5 384 wide and 2 layers, umT5 / LLM 32–64 wide): the smallest encoders, so the whole command's own
    per-caption costs (reading, validation, fitting rows, hashing, writing) weigh the most here."""
    folder = root / family
    if folder.exists():
        return folder
    if family in ("sd1", "sdxl"):
        import tiny_pipelines

        getattr(tiny_pipelines, f"{family}_pipeline")(seed=1).save_pretrained(str(folder))
        return folder
    from test_embed_families import build

    return build(root, family)


def _t5_only(family: str, layers: int):  # noqa: ANN202
    """Chroma (T5 v1.1 XXL) or Wan (umT5-XXL): the family's diffusers pipeline (tests/tiny_t5_families) with
    its text encoder swapped for one of the real width (bench_sd3_flux.XXL: 4096 wide, 64 heads of 64, ff 10240)."""
    import tiny_t5_families as tf
    from bench_sd3_flux import XXL, _t5

    pipe = tf.pipeline(family, 1)
    pipe.register_modules(text_encoder=tf.tiny_umt5(1, **XXL, num_layers=layers) if family in tf.UMT5
                          else _t5(1, layers))
    return pipe


def _real_pipeline(family: str, layers: int):  # noqa: ANN202
    from bench_sd3_flux import build

    return build(family, layers, layers)


#: family → builder of its diffusers pipeline with real-width text encoders `layers` deep (random weights)
REAL_BUILDERS = {"sd1": lambda n: build_pipeline("sd1", n, "fp32"), "sdxl": lambda n: build_pipeline("sdxl", n, "fp32"),
                 "sd3": lambda n: _real_pipeline("sd3", n), "flux": lambda n: _real_pipeline("flux", n),
                 "wan": lambda n: _t5_only("wan", n), "chroma": lambda n: _t5_only("chroma", n)}
#: family → (captions, shard size, batch) of the real-width ratio at one layer: each family's run (2 repeats)
#: takes 1–4 minutes on the idle 2 cores (6–7 at load 8). Bare rows/s at load 7–9: sd1 13, sdxl 5.8, sd3 0.77,
#: flux 0.16 (T5-XXL over 512 unmasked positions: ~3 CPU-s a row for its one layer), wan 1.2 and chroma 0.64
#: (masked: rows cut to their length bucket).
REAL_RUNS = {"sd1": (1024, 128, 32), "sdxl": (512, 64, 32), "sd3": (24, 6, 6), "flux": (12, 3, 3),
             "wan": (96, 24, 24), "chroma": (48, 12, 12)}


def real_model(family: str, root: Path, layers: int = 1) -> Path:
    """A diffusers folder of the family at its released encoders' widths and its tokenizers' real lengths
    (CLIP 77; T5 256 for SD3, 512 for Flux / Wan / Chroma), `layers` transformer layers per encoder, random
    weights, saved as diffusers saves the pipeline (the builders bench_embed.build_pipeline,
    bench_sd3_flux.build, tests/tiny_t5_families): what a user's run does per row, at 1/12–1/32 of the depth
    (a tower read at its penultimate layer runs one block fewer: SDXL's CLIP-L, one layer deep, runs none).
    The command's own per-row costs (fitting, hashing, writing) grow with the width, not the depth: at one
    layer they weigh ~12–32× more than at the released depth, so this ratio is still a lower bound.

    Vocabulary: the CLIP tokenizers are the real BPE (49,408 ids, the packaged OpenAI merges) and their
    embedding tables 49,408 rows. T5 and umT5 use the tests' 600-piece SentencePiece (the real ones, 32,128 /
    256,384 pieces, are not on this offline machine; umT5-XXL's table alone is 4.2 GB in fp32, loaded twice
    here): their tables have 640 rows. The ratio does not depend on the table's rows: an embedding is a row
    lookup (cost ∝ tokens × width), and the tokenizer's per-caption cost depends on the pieces it emits, not on
    how many it could. What does depend on the tokenizer is the number of pieces a caption becomes, which sets
    Wan's masked length (its rows are cut to their length bucket): the run prints the mean."""
    folder = root / f"real-{family}-{layers}"
    if not folder.exists():
        pipe = REAL_BUILDERS[family](layers)
        pipe.save_pretrained(str(folder))
        del pipe
    return folder


def timed_embed(model: Path, caps_file: Path, out: Path, *extra: str) -> dict:
    """`sdclip embed` in-process, with the driver's own steps timed: the validation scan (Job.prepare) and
    each shard's completion (Job.complete: written, hashed, listed). Start-up-independent rates come from
    these marks: `steady` = rows/s between the first and the last shard's completion (shard 0 is the warm-up)."""
    from sdclip.jobs.driver import Job

    marks: dict = {"shards": []}
    real_prepare, real_complete = Job.prepare, Job.complete

    def prepare(self, *a, **kw):  # noqa: ANN001, ANN202
        t, c = time.perf_counter(), time.process_time()
        real_prepare(self, *a, **kw)
        marks["scan_s"], marks["scan_cpu_s"] = time.perf_counter() - t, time.process_time() - c

    def complete(self, record: dict) -> None:  # noqa: ANN001
        real_complete(self, record)
        marks["shards"].append((time.perf_counter(), record["rows"], time.process_time()))

    Job.prepare, Job.complete = prepare, complete
    try:
        marks["total_s"] = sdclip_embed(model, caps_file, out, *extra)
    finally:
        Job.prepare, Job.complete = real_prepare, real_complete
    (t0, _, c0), *rest = marks["shards"]
    marks["steady_rows_s"] = sum(n for _, n, _ in rest) / max(rest[-1][0] - t0, 1e-9)
    #: rows per CPU-second of this process (all its threads): less disturbed by other processes than wall time
    marks["steady_rows_cpu_s"] = sum(n for _, n, _ in rest) / max(rest[-1][2] - c0, 1e-9)
    return marks


def mean_tokens(out: Path) -> list[float]:
    """Mean token count per role (the shards' `token_counts`) over a job's rows."""
    import torch
    from safetensors import safe_open

    counts = []
    for shard in sorted(out.glob("shard-*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            counts.append(f.get_tensor("token_counts").float())
    return [round(float(v), 1) for v in torch.cat(counts).mean(0)]


#: the ratio's models: the tests' tiny encoders, or the released widths `layers` deep
RATIO_MODELS = {"tiny": lambda family, root, layers: family_model(family, root), "real": real_model}


def family_ratio(family: str, root: Path, caps: list[str], caps_file: Path, shard: int, dtype: str = "fp32",
                 repeats: int = 2, batch: int = BATCH, width: str = "tiny", layers: int = 1) -> dict:
    """Whole `sdclip embed` rows/s ÷ sdclip's bare encoder rows/s (Conditioner.encode on the same batches of
    `batch` captions, model loaded, warmed up), one family. Two whole-command figures, both free of start-up
    (model load, process start): `steady` (the encoding phase: reading, encoding, fitting, hashing, writing
    per shard after the first) and `marginal` (steady plus the validation scan's time per caption: what one
    more caption costs the whole command). Interleaved, best of `repeats` each: the machine is shared. Also per
    CPU-second of this process (all threads): on a loaded machine far steadier than wall time. `width`: the
    tests' tiny encoders or the released widths (real_model, `layers` deep); `batch` captions a batch."""
    import shutil

    import torch

    from sdclip.conditioner import Conditioner

    folder = RATIO_MODELS[width](family, root, layers)
    cond = Conditioner.from_pretrained(folder, "diffusers", dtype=C.dtype_of(dtype))
    bare_s = bare_cpu = float("inf")
    best = None
    n_bare = len(caps) - shard  # as many rows as the steady shards hold
    for rep in range(repeats):
        with torch.no_grad():
            cond.encode([f"warm-up {rep}"])
            t, c = time.perf_counter(), time.process_time()
            for lo in range(0, n_bare, batch):
                cond.encode([f"{rep} {c}" for c in caps[lo : min(lo + batch, n_bare)]])  # new texts: no cache hits
            bare_s, bare_cpu = min(bare_s, time.perf_counter() - t), min(bare_cpu, time.process_time() - c)
        out = root / f"ratio-{family}-{dtype}-{rep}"
        m = timed_embed(folder, caps_file, out, "--preset", "diffusers", "--shard-size", str(shard),
                        "--batch-size", str(batch), "--dtype", dtype)
        m["mean_tokens"] = mean_tokens(out)
        shutil.rmtree(out)  # real-width shards are MBs a row: never more than one job's on disk
        if best is None:
            best = m
        else:
            for key in ("steady_rows_s", "steady_rows_cpu_s"):
                best[key] = max(best[key], m[key])
            for key in ("scan_s", "scan_cpu_s", "total_s"):
                best[key] = min(best[key], m[key])
    bare, bare_c = n_bare / bare_s, n_bare / bare_cpu
    steady, steady_c = best["steady_rows_s"], best["steady_rows_cpu_s"]
    marginal = 1 / (1 / steady + best["scan_s"] / len(caps))
    marginal_c = 1 / (1 / steady_c + best["scan_cpu_s"] / len(caps))
    return {"family": family, "dtype": dtype, "width": width, "layers": layers if width == "real" else None,
            "captions": len(caps), "shard_size": shard, "batch": batch, "mean_tokens": best["mean_tokens"],
            "bare_rows_s": bare, "steady_rows_s": steady,
            "marginal_rows_s": marginal, "scan_s": best["scan_s"], "total_s": best["total_s"],
            "whole_rows_s_with_startup": len(caps) / best["total_s"], "ratio_steady": steady / bare,
            "ratio_marginal": marginal / bare, "bare_rows_cpu_s": bare_c, "marginal_rows_cpu_s": marginal_c,
            # cores this process got (CPU-s per wall-s): under load the two sides' shares differ, their CPU per row not
            "bare_cores": bare / bare_c, "steady_cores": steady / steady_c,
            "ratio_marginal_cpu": marginal_c / bare_c}


# ---- against each trainer's own caching path (issue 21) --------------------------------------------------
#: sd-scripts' files read for the transliteration below (kohya-ss/sd-scripts)
SD_SCRIPTS = {"flux": "library/strategy_flux.py @ 1065dd1b56b4b18e211d3827fe22b459c81dd12c",
              "sd3": "library/strategy_sd3.py @ 07007bf75107b928b11d2a754035fd27ba228121"}
#: T5 length of each trainer path (sd-scripts' default t5xxl_max_token_length: Flux dev 512, SD3 256)
T5_LENGTH = {"flux": 512, "sd3": 256}


def kohya_loop(pipe, family: str, caps: list[str], out: Path, batch: int) -> dict[str, np.ndarray]:  # noqa: ANN001
    """sd-scripts' text-encoder caching loop, transliterated (SD_SCRIPTS): per batch, `tokenize` (every
    tokenizer padded to max_length, truncated), `encode_tokens` with no masks (apply_*_attn_mask False, the
    default), bf16 upcast to float32, `.cpu().numpy()`, then one uncompressed `np.savez` per image. Returns
    the last image's arrays (for the same-tensors check)."""
    import numpy as np
    import torch

    n5 = T5_LENGTH[family]
    t5_tok, t5 = (pipe.tokenizer_2, pipe.text_encoder_2) if family == "flux" else (pipe.tokenizer_3, pipe.text_encoder_3)
    arrays: dict[str, np.ndarray] = {}
    for lo in range(0, len(caps), batch):
        text = caps[lo : lo + batch]
        l_tok = pipe.tokenizer(text, max_length=77, padding="max_length", truncation=True, return_tensors="pt")
        t_tok = t5_tok(text, max_length=n5, padding="max_length", truncation=True, return_tensors="pt")
        with torch.no_grad():
            t5_out, _ = t5(t_tok["input_ids"], None, return_dict=False, output_hidden_states=True)
            if family == "flux":
                pooled = pipe.text_encoder(l_tok["input_ids"])["pooler_output"]
                txt_ids = torch.zeros(t5_out.shape[0], t5_out.shape[1], 3)
            else:
                g_tok = pipe.tokenizer_2(text, max_length=77, padding="max_length", truncation=True, return_tensors="pt")
                lo_ = pipe.text_encoder(l_tok["input_ids"], None, output_hidden_states=True)
                go_ = pipe.text_encoder_2(g_tok["input_ids"], None, output_hidden_states=True)
                pooled = torch.cat((lo_[0], go_[0]), dim=-1)
                lg_out = torch.cat([lo_.hidden_states[-2], go_.hidden_states[-2]], dim=-1)
        t5_out, pooled = t5_out.float().cpu().numpy(), pooled.float().cpu().numpy()
        for i in range(len(text)):
            stem = out / f"img{lo + i}"
            if family == "flux":
                arrays = dict(l_pooled=pooled[i], t5_out=t5_out[i], txt_ids=txt_ids.numpy()[i],
                              t5_attn_mask=t_tok["attention_mask"].numpy()[i], apply_t5_attn_mask=False)
                np.savez(f"{stem}_flux_te.npz", **arrays)
            else:
                arrays = dict(lg_out=lg_out.float().cpu().numpy()[i], lg_pooled=pooled[i], t5_out=t5_out[i],
                              clip_l_attn_mask=l_tok["attention_mask"].numpy()[i],
                              clip_g_attn_mask=g_tok["attention_mask"].numpy()[i],
                              t5_attn_mask=t_tok["attention_mask"].numpy()[i], apply_lg_attn_mask=False,
                              apply_t5_attn_mask=False)
                np.savez(f"{stem}_sd3_te.npz", **arrays)
    return arrays


def diffusers_loop(pipe, family: str, caps: list[str], out: Path, batch: int) -> dict:  # noqa: ANN001
    """diffusers' `encode_prompt` over batches of captions (positives only, as a trainer caches), each batch's
    tensors saved with safetensors' `save_file` (one file a batch: the cheapest way to keep them)."""
    import torch
    from safetensors.torch import save_file

    with torch.no_grad():
        for lo in range(0, len(caps), batch):
            text = caps[lo : lo + batch]
            if family == "flux":
                pe, pp, _ = pipe.encode_prompt(prompt=text, prompt_2=None, device="cpu",
                                               max_sequence_length=T5_LENGTH[family])
            else:
                pe, _, pp, _ = pipe.encode_prompt(text, None, None, device="cpu", do_classifier_free_guidance=False,
                                                  max_sequence_length=T5_LENGTH[family])
            tensors = {"prompt_embeds": pe.contiguous(), "pooled_prompt_embeds": pp.contiguous()}
            save_file(tensors, str(out / f"batch-{lo:06d}.safetensors"))
    return tensors


def trainer_paths(family: str, root: Path, n: int, batch: int, dtypes: list[str], clip_layers: int,
                  t5_layers: int) -> list[dict]:
    """rows/s of sd-scripts' caching loop, diffusers' encode_prompt loop, `sdclip embed --format kohya` and
    `sdclip embed` (its own shards) on the same captions and the same real-width, shallow encoders
    (bench_sd3_flux.build), per dtype; and the largest difference between their tensors. The trainer loops
    are timed with the model loaded (after one warm-up batch); sdclip by its start-up-free marginal rate
    (timed_embed: steady shards plus the validation scan per caption)."""
    import numpy as np
    import torch

    import sdclip.dataset
    from bench_sd3_flux import build

    caps = captions(n, seed=3)
    pipe = build(family, clip_layers, t5_layers)
    folder = root / f"trainer-{family}"
    pipe.save_pretrained(str(folder))
    results = []
    for dtype in dtypes:
        pipe.to(dtype=C.dtype_of(dtype))
        images = root / f"images-{family}-{dtype}"
        images.mkdir()
        for i, c in enumerate(caps):
            (images / f"img{i}.png").write_bytes(b"not read: only the name and its caption sidecar are")
            (images / f"img{i}.txt").write_text(c + "\n", encoding="utf-8")
        r = {"family": family, "dtype": dtype, "captions": n, "batch": batch, "sd_scripts": SD_SCRIPTS[family]}
        warm = ["warm-up caption"] * batch
        for name, loop in (("kohya_loop", kohya_loop), ("diffusers_loop", diffusers_loop)):
            dest = root / f"{name}-{family}-{dtype}"
            dest.mkdir()
            loop(pipe, family, warm, dest, batch)
            t, c = time.perf_counter(), time.process_time()
            r[f"{name}_last"] = loop(pipe, family, caps, dest, batch)
            r[f"{name}_rows_s"] = n / (time.perf_counter() - t)
            r[f"{name}_rows_cpu_s"] = n / (time.process_time() - c)
        common = ("--preset", "diffusers", "--dtype", dtype, "--batch-size", str(batch), "--shard-size", str(batch))
        for name, extra in (("sdclip_kohya", ("--format", "kohya")), ("sdclip", ())):
            m = timed_embed(folder, images, root / f"{name}-{family}-{dtype}", *common, *extra)
            r[f"{name}_rows_s"] = 1 / (1 / m["steady_rows_s"] + m["scan_s"] / n)
            r[f"{name}_rows_cpu_s"] = 1 / (1 / m["steady_rows_cpu_s"] + m["scan_cpu_s"] / n)
            r[f"{name}_with_startup_rows_s"] = n / m["total_s"]
        last = n - 1
        ours = np.load(images / f"img{last}_{'flux' if family == 'flux' else 'sd3'}_te.npz")
        theirs = r.pop("kohya_loop_last")
        r["max_abs_diff_kohya"] = max(float(np.abs(ours[k].astype(np.float64) - theirs[k]).max()) for k in theirs
                                      if np.asarray(theirs[k]).dtype.kind == "f")
        items = sdclip.dataset.open(root / f"sdclip-{family}-{dtype}")  # a repeated caption's row is a reference
        ours_pe = torch.as_tensor(items[len(items) - 1]["prompt_embeds"]).float()
        theirs_pe = r.pop("diffusers_loop_last")["prompt_embeds"][-1].float()
        r["max_abs_diff_diffusers"] = float((ours_pe - theirs_pe).abs().max()) if ours_pe.shape == theirs_pe.shape \
            else f"shapes {list(ours_pe.shape)} vs {list(theirs_pe.shape)}"
        r["speedup_vs_kohya"] = r["sdclip_kohya_rows_s"] / r["kohya_loop_rows_s"]
        r["speedup_vs_diffusers"] = r["sdclip_rows_s"] / r["diffusers_loop_rows_s"]
        r["speedup_vs_kohya_cpu"] = r["sdclip_kohya_rows_cpu_s"] / r["kohya_loop_rows_cpu_s"]
        r["speedup_vs_diffusers_cpu"] = r["sdclip_rows_cpu_s"] / r["diffusers_loop_rows_cpu_s"]
        results.append(r)
        print({k: v for k, v in r.items() if k != "sd_scripts"}, flush=True)
    return results


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


def memory(sizes: tuple[int, ...] = (1_000, 100_000), families: tuple[str, ...] = tuple(MEMORY_RUNS),
           kinds: tuple[str, ...] = ("unique", "repeats")) -> dict:
    """Peak RSS of the whole `sdclip embed` on n captions (unique, and with repeats: every caption 4 times)
    per family, the tests' tiny models: flat in n means nothing kept per caption grows (the scan's per-row
    numbers, 28 bytes a caption, memory-mapped, are the one O(n) part: 2.8 MB at 100k)."""
    import shutil
    import sys

    sys.path.insert(0, str(C.REPO / "tests" / "jobs"))
    from test_embed_families import build
    from tiny_models import tiny_family, write_layout

    raw: dict = {"machine": C.machine(), "batch": BATCH, "runs": []}
    name = "embed_memory_" + "_".join(families) + ("" if set(kinds) == {"unique", "repeats"} else "_" + "_".join(kinds))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for family in families:
            model = (write_layout("single.safetensors", tiny_family("sd1"), tmp / family) if family == "sd1"
                     else build(tmp, family))
            for kind in kinds:
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
                    C.write_json(name, raw)  # after every run: a long check stopped part-way keeps its runs
    print(C.md_table(["family", "captions", "n", "peak RSS", "wall", "shards on disk"], rows))
    print("wrote", C.write_json(name, raw))
    return raw


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captions", type=int, default=None, help="192; --ratio-width real: per family (REAL_RUNS)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--families", default="sd1,sdxl", help="comma-separated (real depth: sd1 only is quick enough)")
    ap.add_argument("--only-families", action="store_true",
                    help="only the per-family ratio and bytes-per-caption tables (issue 21)")
    ap.add_argument("--ratio-families", default=None, help=f"{RATIO_FAMILIES}; --ratio-width real: {REAL_RATIO_FAMILIES}")
    ap.add_argument("--ratio-width", choices=("tiny", "real"), default="tiny",
                    help="the ratio's models: the tests' tiny encoders, or the released widths --ratio-layers deep")
    ap.add_argument("--ratio-layers", type=int, default=1, help="--ratio-width real: transformer layers per encoder")
    ap.add_argument("--ratio-batch", type=int, default=None, help=f"captions a batch ({BATCH}; real: per family)")
    ap.add_argument("--shard-size", type=int, default=None,
                    help="the ratio's shards (steady = after the first): 64; --ratio-width real: per family")
    ap.add_argument("--trainers", default="", help="comma-separated sd3,flux: sd-scripts / diffusers loops vs "
                    "sdclip embed (real widths, shallow), then exit")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the ratio (best of)")
    ap.add_argument("--trainer-captions", type=int, default=12)
    ap.add_argument("--trainer-batch", type=int, default=3)
    ap.add_argument("--trainer-dtypes", default="fp32,bf16")
    ap.add_argument("--t5-layers", type=int, default=1)
    ap.add_argument("--clip-layers", type=int, default=1)
    ap.add_argument("--memory", default="", metavar="N,M",
                    help="only the peak-RSS check: `sdclip embed` on N vs M captions, a process each (e.g. 1000,100000)")
    ap.add_argument("--memory-families", default=",".join(MEMORY_RUNS))
    ap.add_argument("--memory-kinds", default="unique,repeats", help="unique captions, each 4 times, or both")
    args = ap.parse_args()
    args.ratio_families = args.ratio_families or (REAL_RATIO_FAMILIES if args.ratio_width == "real" else RATIO_FAMILIES)
    C.setup()
    import sys

    if args.memory:
        memory(tuple(int(n) for n in args.memory.split(",")), tuple(args.memory_families.split(",")),
               tuple(args.memory_kinds.split(",")))
        return

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "jobs"))
    if args.trainers:
        return trainers(args)
    if args.only_families:
        return families_only(args)
    args.captions = args.captions or 192
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


RATIO_FAMILIES = "sd1,sdxl,sd3,flux,wan,chroma,qwen-image,z-image"
REAL_RATIO_FAMILIES = "sd1,sdxl,sd3,flux,wan,chroma"


def families_only(args) -> None:  # noqa: ANN001
    """Issue 21's measures, one run side by side: whole-command ÷ bare-encoder rows/s per family (the tests'
    tiny models, or `--ratio-width real`: the released widths, `--ratio-layers` deep, each family its own
    caption count / shard size / batch from REAL_RUNS unless --captions / --shard-size / --ratio-batch say), and
    bytes per caption at bf16 for SD3 / Flux / Wan per format (real widths; tiny runs only)."""
    import gc
    import os

    from sdclip.conventions.family import FAMILIES

    real = args.ratio_width == "real"
    families = [f for f in args.ratio_families.split(",") if f in FAMILIES and (not real or f in REAL_BUILDERS)]
    raw = {"machine": C.machine(), "width": args.ratio_width, "batch": BATCH, "ratio": [], "bytes": {}}
    if real:
        raw["layers"] = args.ratio_layers
    else:
        raw.update(captions=args.captions or 192, shard_size=args.shard_size or 64)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []
        for family in families:
            n, shard, batch = REAL_RUNS[family] if real else (192, 64, BATCH)
            n, shard, batch = args.captions or n, args.shard_size or shard, args.ratio_batch or batch
            caps = captions(n)
            caps_file = tmp / f"caps-{n}.txt"
            caps_file.write_text("".join(c + "\n" for c in caps))
            load = os.getloadavg()[0]
            print(f"{family}: {n} captions, shards of {shard}, batches of {batch}, load {load:.1f}", flush=True)
            t = time.perf_counter()
            r = family_ratio(family, tmp, caps, caps_file, shard, repeats=args.repeats, batch=batch,
                             width=args.ratio_width, layers=args.ratio_layers)
            r.update(load_before=load, load_after=os.getloadavg()[0], run_s=time.perf_counter() - t)
            raw["ratio"].append(r)
            rows.append([family, f"{n} / {shard} / {batch}", r["mean_tokens"], r["bare_rows_s"], r["steady_rows_s"],
                         r["marginal_rows_s"], r["whole_rows_s_with_startup"], f"{r['ratio_steady']:.2f}",
                         f"{r['ratio_marginal']:.2f}", f"{r['ratio_marginal_cpu']:.2f}",
                         f"{r['load_before']:.1f}–{r['load_after']:.1f}", f"{r['run_s']:.0f} s"])
            print(rows[-1], flush=True)
            if real:
                import shutil

                shutil.rmtree(tmp / f"real-{family}-{args.ratio_layers}")  # GBs at real width
            gc.collect()
        print(C.md_table(["family", "captions / shard / batch", "mean tokens per role", "bare encoder (rows/s)",
                          "embed, steady (rows/s)", "embed, marginal incl. validation (rows/s)",
                          "embed incl. start-up (rows/s)", "ratio steady", "ratio marginal",
                          "ratio marginal (CPU time)", "load (1 min)", "run"], rows))
        for family in () if real else REAL_SHAPES:
            b = bytes_per_caption(family, tmp)
            raw["bytes"][family] = b
        brows = [[family, name, f"{v / 1e6:.3f} MB"] for family, b in raw["bytes"].items() for name, v in b.items()]
        if brows:
            print(C.md_table(["family", "format (bf16, 40-token caption, real widths)", "bytes / caption"], brows))
    default = args.ratio_families == (REAL_RATIO_FAMILIES if real else RATIO_FAMILIES)
    # a subset run (--ratio-families wan) gets its own file: it never overwrites the all-families figures
    deep = real and args.ratio_layers != 1  # another depth: its own file (embed_families_real_layers4...)
    name = ("embed_families" + ("_real" if real else "") + (f"_layers{args.ratio_layers}" if deep else "")
            + ("" if default else "_" + "_".join(families)))
    print("wrote", C.write_json(name, raw))


def trainers(args) -> None:  # noqa: ANN001
    """Issue 21's trainer measure: sdclip embed against sd-scripts' and diffusers' own caching paths."""
    raw = {"machine": C.machine(), "load_note": "2 shared cores; other engineers' tests and benches running",
           "clip_layers": args.clip_layers, "t5_layers": args.t5_layers, "runs": []}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.trainers.split(","):
            for r in trainer_paths(family, Path(tmp), args.trainer_captions, args.trainer_batch,
                                   args.trainer_dtypes.split(","), args.clip_layers, args.t5_layers):
                raw["runs"].append(r)
                rows.append([family, r["dtype"], r["kohya_loop_rows_s"], r["sdclip_kohya_rows_s"],
                             f"{r['speedup_vs_kohya']:.2f}× ({r['speedup_vs_kohya_cpu']:.2f}× CPU)",
                             r["diffusers_loop_rows_s"], r["sdclip_rows_s"],
                             f"{r['speedup_vs_diffusers']:.2f}× ({r['speedup_vs_diffusers_cpu']:.2f}× CPU)",
                             r["max_abs_diff_kohya"], r["max_abs_diff_diffusers"]])
    print(C.md_table(["family", "dtype", "sd-scripts loop (rows/s)", "sdclip --format kohya", "×",
                      "diffusers encode_prompt loop", "sdclip (own shards)", "×", "max |Δ| kohya npz",
                      "max |Δ| prompt_embeds"], rows))
    print("wrote", C.write_json("embed_trainers", raw))


if __name__ == "__main__":
    main()
