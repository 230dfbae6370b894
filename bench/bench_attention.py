"""Cross-attention tracing overhead: denoising time traced ÷ untraced on a real-shaped SD1 UNet.

diffusers' default UNet2DConditionModel config is SD1's (block_out_channels 320/640/1280/1280, 8 heads,
16 attn2 layers at 1/1, 1/2, 1/4 and 1/8 of the latent); cross_attention_dim 768, random weights. The loop
is the pipeline's own: CFG batch of 2, Euler scheduler, `trace()` on a pipeline-shaped object. Text
encoding and VAE decoding are left out: tracing does not touch them, so the ratio here is the upper bound of
a whole generation's. Untraced and traced runs alternate; best of `--repeats` each. The traced latents are
checked bit for bit against the untraced ones.

    python bench/bench_attention.py [--size 256] [--steps 3] [--slots 77] [--repeats 2] [--device cpu|cuda]
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
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size / 8)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--slots", type=int, default=77, help="conditioning length N (77·k)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    setup(args.device)

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


if __name__ == "__main__":
    main()
