"""SD3 and Flux, prompt + negative end to end: sdclip against diffusers' own `encode_prompt`.

Real diffusers pipelines (`StableDiffusion3Pipeline`, `FluxPipeline`) whose text encoders have the real
widths with few layers, random weights: CLIP-L 768 (with projection for SD3), CLIP-G 1280 with projection,
T5 v1.1 XXL width (d_model 4096, d_ff 10240 gated-GELU, 64 heads of 64). Every layer of a tower costs the
same, so a full model's time ≈ per-layer time × its depth (12 / 32 / 24). The T5 vocabulary is the tests'
tiny SentencePiece one (its embedding table is a lookup: its size does not change the time). The
transformer and VAE are tiny: only the prompt path is timed.

- diffusers: SD3 `pipe.encode_prompt(prompt, prompt_2, prompt_3, negative_prompt=...,
  do_classifier_free_guidance=True, max_sequence_length=256)`; Flux's encode_prompt has no negative, so it is
  called twice (prompt, then negative), as a true-CFG user does (max_sequence_length=512).
- sdclip: `conditioner_from_pipeline(pipe, preset="diffusers")` over the pipeline's own modules, then
  `cond(prompt, negative)`. Cold: the row cache and T5's position-bias table emptied before every call (what
  a fresh Conditioner over the loaded model sees). Repeated negative: a new positive prompt each call, the
  same negative, cache kept.

Plain text (no weights) so both produce the same tensors: the bench stops unless ‖sdclip − diffusers‖ ÷
‖diffusers‖ of every tensor is within `TOLERANCE` (fp32 rounding; bf16 rounding), and reports it. Each side
runs once untimed (that comparison), then the three are called in turn `--repeats` times (diffusers, cold,
repeated, diffusers, ...): medians of wall and of CPU time (the machine may be shared), 2 threads.

    python bench/bench_sd3_flux.py [--t5-layers 1] [--clip-layers 2] [--dtypes fp32,bf16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import time

import torch

from _common import dtype_of, interleaved, machine, md_table, setup, write_json

PROMPT = (
    "a majestic red fox standing in a misty autumn forest at golden hour, soft volumetric light filtering "
    "through the tall pine trees, fallen leaves covering the ground in shades of orange and crimson, a small "
    "stream reflecting the warm sky, a wooden bridge crossing the water near an old stone cottage with smoke "
    "rising from its chimney, highly detailed fur, sharp focus on the eyes, shallow depth of field, bokeh, "
    "cinematic composition, photorealistic, 85mm lens, award winning wildlife photography"
)
NEGATIVE = "blurry, lowres, watermark, text, signature, jpeg artifacts, deformed, extra limbs, bad anatomy, cropped"
PREFIXES = ("photo", "painting", "image", "render", "picture", "drawing", "shot", "still", "capture", "view")
XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64)
SEQ = {"sd3": 256, "flux": 512}


def variants():
    """Positive prompts none of whose rows (CLIP or T5) was encoded before: the first words change."""
    for i in itertools.count():
        yield f"{PREFIXES[i % len(PREFIXES)]} {i // len(PREFIXES)}, " + PROMPT


def _clip(role: str, seed: int, layers: int, projection: bool):  # noqa: ANN202
    """A transformers CLIP text model of the real width, `layers` deep, every parameter random."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from tiny_models import REAL, randomize_, tiny_config

    sizes = dict(REAL[role], num_hidden_layers=layers)
    cfg = tiny_config(role, {role: sizes}, projection_dim=sizes["hidden_size"])
    torch.manual_seed(seed)
    return randomize_((CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval(), seed, 0.02)


def _t5(seed: int, layers: int):  # noqa: ANN202
    from tiny_t5 import tiny_t5

    return tiny_t5(seed=seed, **XXL, num_layers=layers).requires_grad_(False)


def build(family: str, clip_layers: int, t5_layers: int):  # noqa: ANN201
    """The diffusers pipeline (fp32) with real-width, shallow text encoders and a tiny transformer / VAE."""
    from tiny_pipelines import IMAGE_SIZE, _flow_scheduler, _flow_vae, clip_tokenizer, t5_tokenizer

    width = XXL["d_model"]
    if family == "sd3":
        from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

        l = _clip("clip-vit-l-14", 0, clip_layers, projection=True)
        g = _clip("openclip-vit-bigg-14", 1, clip_layers, projection=True)
        t5 = _t5(2, t5_layers)
        transformer = SD3Transformer2DModel(
            sample_size=IMAGE_SIZE // 2, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
            num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=width,
            pooled_projection_dim=l.config.projection_dim + g.config.projection_dim, out_channels=4)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=_flow_scheduler(), vae=_flow_vae(),
            text_encoder=l, tokenizer=clip_tokenizer(), text_encoder_2=g, tokenizer_2=clip_tokenizer("!"),
            text_encoder_3=t5, tokenizer_3=t5_tokenizer())
    else:
        from diffusers import FluxPipeline, FluxTransformer2DModel

        l = _clip("clip-vit-l-14", 0, clip_layers, projection=False)
        t5 = _t5(2, t5_layers)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=width, pooled_projection_dim=l.config.hidden_size,
            axes_dims_rope=[2, 2, 4])
        pipe = FluxPipeline(
            transformer=transformer, scheduler=_flow_scheduler(), vae=_flow_vae(),
            text_encoder=l, tokenizer=clip_tokenizer(), text_encoder_2=t5, tokenizer_2=t5_tokenizer(512))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def text_encoders(pipe) -> list:  # noqa: ANN001
    return [m for m in (getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3"))
            if m is not None]


def run_diffusers(pipe, family: str, prompt: str, negative: str) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """diffusers' own prompt path: the four tensors a CFG call needs."""
    if family == "sd3":
        pe, npe, pp, npp = pipe.encode_prompt(prompt, None, None, device="cpu", negative_prompt=negative,
                                              do_classifier_free_guidance=True, max_sequence_length=SEQ[family])
    else:
        pe, pp, _ = pipe.encode_prompt(prompt, None, device="cpu", max_sequence_length=SEQ[family])
        npe, npp, _ = pipe.encode_prompt(negative, None, device="cpu", max_sequence_length=SEQ[family])
    return {"prompt_embeds": pe, "negative_prompt_embeds": npe, "pooled_prompt_embeds": pp,
            "negative_pooled_prompt_embeds": npp}


#: the largest ‖sdclip − diffusers‖ / ‖diffusers‖ of the embeds each dtype allows (the same tensors: fp32 rounding,
#: or the half dtype's rounding compounded over the layers)
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2}


def compare(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> dict[str, float | None]:
    """‖ours − theirs‖ / ‖theirs‖ of each tensor (None where the shapes differ)."""
    return {k: float((ours[k].float() - theirs[k].float()).norm() / theirs[k].float().norm())
            if ours[k].shape == theirs[k].shape else None for k in theirs}


def bench_family(pipe, family: str, dtype_name: str, repeats: int) -> dict:  # noqa: ANN001
    from sdclip.pipelines import conditioner_from_pipeline

    t0 = time.perf_counter()
    cond = conditioner_from_pipeline(pipe, preset="diffusers", max_sequence_length=SEQ[family])
    build_s = time.perf_counter() - t0
    t5 = cond.encoders[-1]

    rows: list[int] = []  # T5 rows per cold call: diffusers encodes 2 (prompt, negative)
    hook = t5.register_forward_pre_hook(lambda _m, a: rows.append(a[0].shape[0]))
    ours = cond(PROMPT, NEGATIVE).diffusers_kwargs()
    hook.remove()
    theirs = run_diffusers(pipe, family, PROMPT, NEGATIVE)  # also both sides' warm-up
    diff = {k: (ours[k].float() - theirs[k].float()).abs().max().item() if ours[k].shape == theirs[k].shape else None
            for k in theirs}
    rel = compare(ours, theirs)
    scale = max(theirs[k].float().abs().max().item() for k in ("prompt_embeds", "negative_prompt_embeds"))
    worst = max((v for v in rel.values() if v is not None), default=float("inf"))
    if None in rel.values() or worst > TOLERANCE[dtype_name]:
        raise SystemExit(f"{family} {dtype_name}: sdclip differs from diffusers: relative difference {rel}")

    def cold():
        # what a fresh Conditioner over the loaded model sees: no encoded row, no position-bias table
        cond.cache.clear()
        t5._bias_cache.clear()
        cond(PROMPT, NEGATIVE)

    fresh = variants()
    cond.cache.clear()
    cond(next(fresh), NEGATIVE)  # the negative is now cached: every later call brings a new prompt
    t = interleaved({"diffusers": lambda: run_diffusers(pipe, family, PROMPT, NEGATIVE), "sdclip_cold": cold,
                     "sdclip_repeated_negative": lambda: cond(next(fresh), NEGATIVE)}, repeats=repeats)
    cond.cache.clear()
    return {"family": family, "dtype": dtype_name, "timings": t, "conditioner_build_s": build_s,
            "max_abs_diff": diff, "relative_diff": rel, "max_abs_value": scale,
            "shape": list(theirs["prompt_embeds"].shape), "sdclip_t5_rows_cold": sum(rows),
            "speedup_cold": t["diffusers"]["wall"] / t["sdclip_cold"]["wall"],
            "speedup_cold_cpu": t["diffusers"]["cpu"] / t["sdclip_cold"]["cpu"],
            "speedup_repeated_negative": t["diffusers"]["wall"] / t["sdclip_repeated_negative"]["wall"],
            "speedup_repeated_negative_cpu": t["diffusers"]["cpu"] / t["sdclip_repeated_negative"]["cpu"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--t5-layers", type=int, default=1, help="of XXL's 24")
    ap.add_argument("--clip-layers", type=int, default=2, help="of CLIP-L's 12 / CLIP-G's 32")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--families", default="sd3,flux")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved calls of each side")
    args = ap.parse_args()
    setup()
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()  # the truncation warnings, once per call
    transformers.logging.set_verbosity_error()
    t0 = time.perf_counter()
    results = []
    for family in args.families.split(","):
        pipe = build(family, args.clip_layers, args.t5_layers)
        for dt in args.dtypes.split(","):
            for m in text_encoders(pipe):
                m.to(dtype_of(dt))
            r = bench_family(pipe, family, dt, args.repeats)
            results.append(r)
            s = r["timings"]
            print(f"  {family} {dt}: diffusers {s['diffusers']['wall']:.3f}s (cpu {s['diffusers']['cpu']:.3f}s), "
                  f"sdclip cold {s['sdclip_cold']['wall']:.3f}s (cpu {s['sdclip_cold']['cpu']:.3f}s), repeated neg. "
                  f"{s['sdclip_repeated_negative']['wall']:.3f}s (cpu {s['sdclip_repeated_negative']['cpu']:.3f}s), "
                  f"relative Δ {r['relative_diff']}", flush=True)
            gc.collect()
        del pipe
        gc.collect()

    def ms(x: float) -> str:
        return f"{1000 * x:,.0f} ms"

    rows = []
    for r in results:
        s, d = r["timings"], r["relative_diff"]
        rows.append([
            f"{r['family'].upper()} {r['dtype']}", ms(s["diffusers"]["wall"]), ms(s["sdclip_cold"]["wall"]),
            f"{r['speedup_cold']:.2f}× (CPU {r['speedup_cold_cpu']:.2f}×)", r["sdclip_t5_rows_cold"],
            ms(s["sdclip_repeated_negative"]["wall"]),
            f"{r['speedup_repeated_negative']:.2f}× (CPU {r['speedup_repeated_negative_cpu']:.2f}×)",
            f"{max(d['prompt_embeds'], d['negative_prompt_embeds']):.1e}",
            f"{max(d['pooled_prompt_embeds'], d['negative_pooled_prompt_embeds']):.1e}",
        ])
    table = md_table(["model, dtype", "diffusers encode_prompt", "sdclip cold", "diffusers ÷ sdclip",
                      "sdclip T5 rows (diffusers: 2)", "sdclip, repeated neg.", "diffusers ÷ sdclip (rep.)",
                      "rel. Δ embeds", "rel. Δ pooled"], rows, "lrrrrrrrr")
    load = os.getloadavg()[0]
    note = (f"real widths, CLIP {args.clip_layers} layers (of 12 / 32), T5-XXL width {args.t5_layers} of 24 layers; "
            f"SD3 T5 {SEQ['sd3']} tokens, Flux {SEQ['flux']}; prompt + negative; medians of {args.repeats} interleaved "
            f"calls (wall; CPU = process time); load average at the end {load:.1f} on {os.cpu_count()} CPUs")
    print(f"\n{note}\n")
    print(table)
    meta = machine() | {"seconds": time.perf_counter() - t0, "clip_layers": args.clip_layers,
                        "t5_layers": args.t5_layers, "repeats": args.repeats}
    path = write_json("sd3_flux", {"meta": meta, "note": note, "prompt": PROMPT, "negative": NEGATIVE,
                                   "results": results, "tables": {"sd3_flux": table}})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
