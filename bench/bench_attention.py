"""Attention tracing overhead: denoising time traced ÷ untraced on a real-shaped SD1 UNet (`--model unet`,
the default) or a real-shaped, tiny-depth Flux / SD3 transformer (`--model flux`, `--model sd3`).

diffusers' default UNet2DConditionModel config is SD1's (block_out_channels 320/640/1280/1280, 8 heads,
16 attn2 layers at 1/1, 1/2, 1/4 and 1/8 of the latent); cross_attention_dim 768, random weights. The loop
is the pipeline's own: CFG batch of 2, Euler scheduler, `trace()` on a pipeline-shaped object. Text
encoding and VAE decoding are left out: tracing does not touch them, so the ratio here is the upper bound of
a whole generation's. Untraced and traced runs alternate; best of `--repeats` each. The traced latents are
checked bit for bit against the untraced ones.

    python bench/bench_attention.py [--size 256] [--steps 3] [--slots 77] [--repeats 2] [--device cpu|cuda]

MM-DiT (`trace_mmdit`, softmax maps over all blocks): Flux.1's attention shape (128-wide heads, 512 T5
slots, 2×2-packed image tokens, RoPE) with 1 joint + 1 single block; SD3.5's (64-wide heads, 77 + 256
slots, 2×2 patches, RMS q/k norms, CFG batch of 2) with 2 joint blocks, at the real widths (24 heads: Flux
3072, SD3.5-medium 1536; ~10 CPU s a step for Flux at 512², so real widths stay CPU-feasible at this depth;
`--heads 6` for a quick look). Random weights; a plain Euler flow loop; the
traced latents are checked bit for bit; the running sums' bytes after 1 and after `--steps` steps are
recorded (they must match: memory independent of the number of steps). On the CPU the MM-DiT runs use one
thread and are timed in process CPU seconds as well as wall seconds: the machine is shared (load 10–17 on
2 cores while this was written), and CPU time is what other jobs disturb least; the ratio is taken from it.

    python bench/bench_attention.py --model flux [--size 512] [--steps 3] [--heads 24] [--readings softmax]
        [--true-cfg 4]

`--true-cfg S` (Flux): FluxPipeline's true CFG, a second transformer call per step on a negative context
(diffusers 0.42.1 pipeline_flux.py lines 900-929); the tracer reads the first (positive) call only (the
items read per block type are recorded: the same as without it; tests/attention/test_mmdit.py checks it).
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch

from _common import machine, md_table, setup, write_json

GOAL = 1.3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (latent = size / 8; default 256, MM-DiT 512)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--slots", type=int, default=77, help="conditioning length N (77·k)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", choices=("unet", "flux", "sd3"), default="unet")
    ap.add_argument("--heads", type=int, default=24, help="MM-DiT attention heads (default: the real 24)")
    ap.add_argument("--readings", default="softmax", help="MM-DiT readings, comma-separated: softmax,output")
    ap.add_argument("--true-cfg", type=float, default=None, help="Flux: true CFG scale (a negative pass per step)")
    args = ap.parse_args()
    if args.true_cfg is not None and args.model != "flux":
        ap.error("--true-cfg is Flux's true CFG")
    setup(args.device)
    if args.model != "unet":
        mmdit(args)
        return
    args.size = args.size or 256

    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    from sdclip.attention import trace

    torch.manual_seed(0)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64).to(args.device).eval()
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in unet.parameters())
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    latent = args.size // 8
    g = torch.Generator().manual_seed(0)
    context = torch.randn(2, args.slots, 768, generator=g).to(args.device)
    start = torch.randn(1, 4, latent, latent, generator=g).to(args.device)
    pipe = SimpleNamespace(unet=unet, do_classifier_free_guidance=True, vae_scale_factor=8)

    def denoise() -> torch.Tensor:
        scheduler.set_timesteps(args.steps)
        x = start * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(torch.cat([x, x]), t)
            uncond, cond = unet(inp, t, encoder_hidden_states=context).sample.chunk(2)
            x = scheduler.step(uncond + 7.5 * (cond - uncond), t, x).prev_sample
        if args.device == "cuda":
            torch.cuda.synchronize()
        return x

    def traced() -> tuple[torch.Tensor, object]:
        with trace(pipe) as tc:
            x = denoise()
        return x, tc.maps()

    denoise()  # warm-up (allocator, kernels)
    plain_s, traced_s = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        plain = denoise()
        plain_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        x, maps = traced()
        traced_s.append(time.perf_counter() - t)
    ratio = min(traced_s) / min(plain_s)
    identical = bool(torch.equal(plain, x))
    sums = maps.maps.sum(0)
    data = {
        "unet": "diffusers UNet2DConditionModel default (SD1) config, cross_attention_dim 768, random weights",
        "parameters": params,
        "build_s": round(build_s, 2),
        "image": [args.size, args.size],
        "latent": [latent, latent],
        "steps": args.steps,
        "slots": args.slots,
        "cfg_batch": 2,
        "repeats": args.repeats,
        "untraced_s": [round(v, 3) for v in plain_s],
        "traced_s": [round(v, 3) for v in traced_s],
        "ratio_best": round(ratio, 3),
        "goal": GOAL,
        "meets_goal": ratio <= GOAL,
        "bit_identical": identical,
        "layers_traced": len(maps.info["layers"]),
        "resolutions": maps.info["resolutions"],
        "map_sum_range": [round(float(sums.min()), 6), round(float(sums.max()), 6)],
        "machine": machine(args.device),
    }
    path = write_json("attention", data)
    print(md_table(
        ["UNet (SD1 shape)", "latent", "steps", "N", "untraced s", "traced s", "traced ÷ untraced", "goal", "bit-identical"],
        [[f"{params / 1e6:.0f}M params", f"{latent}×{latent}", args.steps, args.slots, min(plain_s), min(traced_s),
          f"{ratio:.3f}×", f"≤ {GOAL}×", "yes" if identical else "NO"]],
    ))
    print(f"wrote {path}")


def mmdit(args: argparse.Namespace) -> None:
    """traced ÷ untraced for a tiny-depth, real-shaped Flux or SD3 transformer (module docstring)."""
    from sdclip.attention import trace_mmdit

    size = args.size or 512
    if args.device == "cpu":
        torch.set_num_threads(1)
    heads = args.heads
    readings = tuple(r.strip() for r in args.readings.split(",") if r.strip())
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    latent = size // 8
    if args.model == "flux":
        from diffusers import FluxTransformer2DModel

        model = FluxTransformer2DModel(num_layers=1, num_single_layers=1, num_attention_heads=heads, guidance_embeds=True)
        text_len, cfg, grid = 512, False, latent // 2
        context = torch.randn(1, text_len, 4096, generator=g)
        pooled = torch.randn(1, 768, generator=g)
        negative, negative_pooled = torch.randn(1, text_len, 4096, generator=g), torch.randn(1, 768, generator=g)
        start = torch.randn(1, grid * grid, 64, generator=g)
        rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()
        txt_ids = torch.zeros(text_len, 3)
    else:
        from diffusers import SD3Transformer2DModel

        model = SD3Transformer2DModel(num_layers=2, num_attention_heads=heads, caption_projection_dim=64 * heads,
                                      dual_attention_layers=(0,), qk_norm="rms_norm", sample_size=latent)
        text_len, cfg, grid = 77 + 256, True, latent // 2
        context = torch.randn(2, text_len, 4096, generator=g)
        pooled = torch.randn(2, 2048, generator=g)
        start = torch.randn(1, 16, latent, latent, generator=g)
    model = model.to(args.device).eval()
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    context, pooled, start = context.to(args.device), pooled.to(args.device), start.to(args.device)
    pipe = SimpleNamespace(transformer=model, do_classifier_free_guidance=cfg, vae_scale_factor=8)

    def flux_pass(x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        return model(hidden_states=x, encoder_hidden_states=text, pooled_projections=vector, timestep=t,
                     img_ids=img_ids.to(args.device), txt_ids=txt_ids.to(args.device),
                     guidance=torch.full((1,), 3.5, device=args.device), return_dict=False)[0]

    def denoise(steps: int = args.steps) -> torch.Tensor:
        sigmas = torch.linspace(1.0, 0.0, steps + 1)
        x = start
        for i in range(steps):
            t = sigmas[i].expand(1).to(args.device)
            if args.model == "flux":
                v = flux_pass(x, t, context, pooled)
                if args.true_cfg is not None:  # FluxPipeline's order: positive, then negative
                    v_neg = flux_pass(x, t, negative.to(args.device), negative_pooled.to(args.device))
                    v = v_neg + args.true_cfg * (v - v_neg)
            else:
                uncond, cond = model(hidden_states=torch.cat([x, x]), encoder_hidden_states=context,
                                     pooled_projections=pooled, timestep=(t * 1000).expand(2), return_dict=False)[0].chunk(2)
                v = uncond + 7.0 * (cond - uncond)
            x = x + (sigmas[i + 1] - sigmas[i]) * v
        if args.device == "cuda":
            torch.cuda.synchronize()
        return x

    def traced(steps: int = args.steps) -> tuple[torch.Tensor, object]:
        with trace_mmdit(pipe, readings=readings) as tc:
            x = denoise(steps)
        return x, tc

    denoise(1)  # warm-up (allocator, kernels)
    plain_s, traced_s, plain_cpu, traced_cpu = [], [], [], []
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        plain = denoise()
        plain_s.append(time.perf_counter() - t)
        plain_cpu.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        x, tc = traced()
        traced_s.append(time.perf_counter() - t)
        traced_cpu.append(time.process_time() - c)
    cpu = args.device == "cpu"
    ratio = min(traced_cpu) / min(plain_cpu) if cpu else min(traced_s) / min(plain_s)
    identical = bool(torch.equal(plain, x))
    sums_bytes = sum(v.numel() * v.element_size() for v in tc.state.sums.values())
    one_step_bytes = sum(v.numel() * v.element_size() for v in traced(1)[1].state.sums.values())
    maps = tc.maps()
    total = maps.maps.sum(0)
    shape = {"flux": "Flux.1 attention shape: 128-wide heads, T5 512, 2×2 packing, RoPE; 1 joint + 1 single block",
             "sd3": "SD3.5 attention shape: 64-wide heads, 77 + 256 slots, 2×2 patches, RMS q/k norm, CFG 2; 2 joint blocks"}
    data = {
        "transformer": shape[args.model] + f"; {heads} heads (real: 24), random weights",
        "parameters": params,
        "build_s": round(build_s, 2),
        "image": [size, size],
        "image_tokens": grid * grid,
        "text_slots": text_len,
        "steps": args.steps,
        "readings": list(readings),
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "untraced_s": [round(v, 3) for v in plain_s],
        "traced_s": [round(v, 3) for v in traced_s],
        "untraced_cpu_s": [round(v, 3) for v in plain_cpu],
        "traced_cpu_s": [round(v, 3) for v in traced_cpu],
        "ratio_of": "best process CPU time" if cpu else "best wall time",
        "ratio_wall_best": round(min(traced_s) / min(plain_s), 3),
        "ratio_best": round(ratio, 3),
        "goal": GOAL,
        "meets_goal": ratio <= GOAL,
        "bit_identical": identical,
        "blocks_traced": maps.info["blocks"],
        "true_cfg": args.true_cfg,
        "items_read": maps.info["block_types"],
        "sums_bytes": {"1 step": one_step_bytes, f"{args.steps} steps": sums_bytes},
        "map_sum_range": [round(float(total.min()), 6), round(float(total.max()), 6)],
        "machine": machine(args.device),
    }
    name = f"attention_{args.model}" + ("" if readings == ("softmax",) else "_" + "_".join(readings))
    path = write_json(name + ("" if args.true_cfg is None else "_true_cfg"), data)
    unit = "CPU s" if cpu else "s"
    print(md_table(
        ["transformer", "image tokens", "N", "steps", f"untraced {unit}", f"traced {unit}", "traced ÷ untraced", "goal",
         "bit-identical", "sums bytes (1 / n steps)"],
        [[f"{args.model} ({heads} heads, {params / 1e6:.0f}M params)", grid * grid, text_len, args.steps,
          min(plain_cpu if cpu else plain_s), min(traced_cpu if cpu else traced_s), f"{ratio:.3f}×", f"≤ {GOAL}×", "yes" if identical else "NO", f"{one_step_bytes:,} / {sums_bytes:,}"]],
    ))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
