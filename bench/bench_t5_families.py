"""The T5-only families (Chroma, Wan, PixArt-Σ, AuraFlow), short captions + negative: sdclip against diffusers'
own `encode_prompt`, fp32 and bf16, side by side in one run.

Real diffusers pipelines (ChromaPipeline, WanPipeline, PixArtSigmaPipeline, AuraFlowPipeline; their
constructors take None for the transformer / VAE / scheduler, which encode_prompt never reads) whose text
encoder has the real width with few layers, random weights: T5 v1.1 XXL (Chroma, PixArt-Σ) and umT5-XXL
(Wan): d_model 4096, 64 heads of 64, FFN 10240 gated-GELU; AuraFlow's UMT5 (Pile-T5-XL): 2048, 32 heads,
FFN 5120. Every layer costs the same, so a full model's time ≈ per-layer time × 24. The vocabulary is the
tests' tiny SentencePiece one (a lookup: its size does not change the time).

- diffusers: `pipe.encode_prompt(captions, negatives)` at the length the pipeline's `__call__` uses (Chroma
  512, Wan 512, PixArt-Σ 300, AuraFlow 256).
- sdclip: `conditioner_from_pipeline(pipe, preset="diffusers")`, `cond(captions, negatives)`. Cold: the row
  cache emptied before every call; warm: the same call again (rows from the cache).
- Wan also: sdclip with its length bucketing turned off (every row encoded at 512 slots, masked, as
  diffusers does): the ratio is what encoding only the real tokens buys (issue 22: ≥ 3× on ≈ 20-token
  captions). AuraFlow zero-pads the same way; Chroma and PixArt-Σ return every position's state, but the
  pads past the last relative bucket (91 positions after the prompt) all have the same state: their rows run
  to the prompt's length + 91 (sdclip.encoder.t5_masked).

Same tensors: max abs difference of prompt_embeds and negative_prompt_embeds (and equal masks). Best of
`--repeats` after a warm-up, 2 threads.

    python bench/bench_t5_families.py [--layers 1] [--captions 2] [--dtypes fp32,bf16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import time

import torch

from _common import best_of, dtype_of, machine, md_table, setup, write_json

CAPTIONS = ["a red fox sitting in the snow at dawn, soft light", "a wooden boat on a calm lake, misty mountains",
            "portrait of an old fisherman, film grain, warm tones", "a bowl of ramen on a table, steam rising"]
NEGATIVE = "blurry, lowres"
FAMILIES = ("chroma", "wan", "pixart-sigma", "auraflow")
XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64)
XL = dict(d_model=2048, d_kv=64, d_ff=5120, num_heads=32)
SEQ = {"chroma": 512, "wan": 512, "pixart-sigma": 300, "auraflow": 256}


def build(family: str, layers: int):  # noqa: ANN201
    """The family's diffusers pipeline (fp32) with a real-width, `layers`-deep random text encoder."""
    import inspect

    import diffusers

    from tiny_pipelines import t5_tokenizer
    from tiny_t5 import tiny_t5
    from tiny_t5_families import FAMILY_PIPELINES, tiny_umt5

    if family == "wan":
        enc = tiny_umt5(seed=2, **XXL, num_layers=layers)
    elif family == "auraflow":
        enc = tiny_umt5(seed=2, **XL, num_layers=layers)
    else:
        enc = tiny_t5(seed=2, **XXL, num_layers=layers)
    cls = getattr(diffusers, FAMILY_PIPELINES[family])
    kw = {k: None for k in inspect.signature(cls.__init__).parameters if k not in ("self", "boundary_ratio", "expand_timesteps")}
    kw.update(text_encoder=enc.requires_grad_(False), tokenizer=t5_tokenizer())
    return cls(**kw)


def run_diffusers(pipe, family: str, captions: list[str], negatives: list[str]) -> dict[str, torch.Tensor]:  # noqa: ANN001
    n = SEQ[family]
    if family == "chroma":
        pe, _, pm, ne, _, nm = pipe.encode_prompt(captions, negatives, device="cpu", max_sequence_length=n)
        return {"prompt_embeds": pe, "negative_prompt_embeds": ne, "prompt_attention_mask": pm, "negative_prompt_attention_mask": nm}
    if family == "wan":
        pe, ne = pipe.encode_prompt(captions, negatives, device="cpu", max_sequence_length=n)
        return {"prompt_embeds": pe, "negative_prompt_embeds": ne}
    if family == "pixart-sigma":
        pe, pm, ne, nm = pipe.encode_prompt(captions, True, negative_prompt=negatives, device="cpu", max_sequence_length=n)
    else:
        pe, pm, ne, nm = pipe.encode_prompt(captions, negatives, device="cpu", max_sequence_length=n)
        pm, nm = pm.reshape(pe.shape)[..., 0], nm.reshape(ne.shape)[..., 0]
    return {"prompt_embeds": pe, "negative_prompt_embeds": ne, "prompt_attention_mask": pm, "negative_prompt_attention_mask": nm}


def bench_family(pipe, family: str, dtype_name: str, captions: list[str], repeats: int) -> dict:  # noqa: ANN001
    from sdclip.conditioner import Conditioner
    from sdclip.pipelines import conditioner_from_pipeline

    negatives = [NEGATIVE] * len(captions)
    cond = conditioner_from_pipeline(pipe, preset="diffusers")
    ours = cond(captions, negatives).diffusers_kwargs()
    theirs = run_diffusers(pipe, family, captions, negatives)
    diff = max((ours[k].float() - theirs[k].float()).abs().max().item() for k in ("prompt_embeds", "negative_prompt_embeds"))
    masks = all(torch.equal(ours[k], theirs[k]) for k in theirs if k.endswith("mask"))
    tokens = [cond.prepare(c).parts[0].rows[0].eos[0] + 1 for c in captions]

    def cold(c=cond):  # noqa: ANN001, ANN202
        c.cache.clear()
        c(captions, negatives)

    t = {"diffusers": best_of(lambda: run_diffusers(pipe, family, captions, negatives), repeats=repeats, warmup=0),
         "sdclip_cold": best_of(cold, repeats=repeats)}
    t["sdclip_warm"] = best_of(lambda: cond(captions, negatives), repeats=repeats)
    if family == "wan":  # the same masked encoding, every row at its 512 slots (no pad shortcut either)
        from sdclip.encoder import t5_masked

        role = cond.family.roles[0]
        slots = dataclasses.replace(cond.family, roles=(dataclasses.replace(
            role, masking=dataclasses.replace(role.masking, zero_after=False)),))
        full = Conditioner(cond.encoders, slots, cond.options, t5_tokenizer=cond.t5_tokenizer, fingerprint="slots")
        saturation, t5_masked.saturation = t5_masked.saturation, lambda cfg: 1 << 20
        try:
            t["sdclip_512_slots"] = best_of(lambda: cold(full), repeats=repeats)
        finally:
            t5_masked.saturation = saturation
    return {"family": family, "dtype": dtype_name, "seconds": t, "max_abs_diff": diff, "masks_equal": masks,
            "max_abs_value": theirs["prompt_embeds"].float().abs().max().item(), "caption_tokens": tokens,
            "shape": list(theirs["prompt_embeds"].shape), "speedup_cold": t["diffusers"] / t["sdclip_cold"],
            "speedup_warm": t["diffusers"] / t["sdclip_warm"],
            **({"bucketed_vs_512_slots": t["sdclip_512_slots"] / t["sdclip_cold"]} if "sdclip_512_slots" in t else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=1, help="of the encoders' 24")
    ap.add_argument("--captions", type=int, default=2, help="captions per call (each with the negative)")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    setup()
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    captions = CAPTIONS[: args.captions]
    t0 = time.perf_counter()
    results = []
    kept = _earlier(args, captions)  # families not run now keep their last results (same layers and captions)
    for family in args.families.split(","):
        pipe = build(family, args.layers)
        for dt in args.dtypes.split(","):
            pipe.text_encoder.to(dtype_of(dt))
            r = bench_family(pipe, family, dt, captions, args.repeats)
            results.append(r)
            s = r["seconds"]
            print(f"  {family} {dt}: diffusers {s['diffusers']:.3f}s, sdclip cold {s['sdclip_cold']:.3f}s, "
                  f"warm {s['sdclip_warm']:.4f}s, max|Δ| {r['max_abs_diff']:.1e}, masks equal {r['masks_equal']}", flush=True)
            gc.collect()
        del pipe
        gc.collect()
    order = {(f, d): i for i, (f, d) in enumerate((f, d) for f in FAMILIES for d in ("fp32", "bf16"))}
    results = sorted(results + [r for r in kept if (r["family"], r["dtype"]) not in {(x["family"], x["dtype"]) for x in results}],
                     key=lambda r: order.get((r["family"], r["dtype"]), 99))

    def ms(x: float) -> str:
        return f"{1000 * x:,.1f} ms"

    rows = [[f"{r['family']} {r['dtype']}", str(r["shape"]), ms(r["seconds"]["diffusers"]), ms(r["seconds"]["sdclip_cold"]),
             f"{r['speedup_cold']:.2f}×", ms(r["seconds"]["sdclip_warm"]), f"{r['speedup_warm']:.0f}×",
             f"{r['bucketed_vs_512_slots']:.1f}×" if "bucketed_vs_512_slots" in r else "—",
             f"{r['max_abs_diff']:.1e} (÷ {r['max_abs_value']:.2g})", "yes" if r["masks_equal"] else "NO"]
            for r in results]
    table = md_table(["family, dtype", "embeds", "diffusers encode_prompt", "sdclip cold", "diffusers ÷ sdclip (cold)",
                      "sdclip warm", "diffusers ÷ sdclip (warm)", "bucketed vs 512 slots", "max abs Δ (max abs value)",
                      "masks equal"], rows)
    print(table)
    write_json("t5_families", {"machine": machine(), "layers": args.layers, "captions": captions, "negative": NEGATIVE,
                               "results": results, "table": table, "wall_s": time.perf_counter() - t0})


def _earlier(args: argparse.Namespace, captions: list[str]) -> list[dict]:
    import json

    from _common import RESULTS

    path = RESULTS / "t5_families.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    same = doc.get("layers") == args.layers and doc.get("captions") == captions
    return [r for r in doc.get("results", []) if same]


if __name__ == "__main__":
    main()
