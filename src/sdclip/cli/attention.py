"""`sdclip attention`: generate with sdclip's conditioning and write the cross-attention map of every slot.

Contract (keep it stable): `--out DIR` receives
- maps.safetensors: `maps` [N, H, W] float32 at the latent size (image / VAE factor), raw probabilities
  averaged over the traced layers, heads and steps, so at every pixel the N maps sum to 1;
- tokens.json: a list with one entry per slot (index, text, piece, word, word_span, row, weight, kind);
- image.png, words/NN_word.png (one overlay per word of the prompt), contact_sheet.png.
SD3 / Flux / Chroma folders (MM-DiT, sdclip.attention.mmdit_generate): maps at the image-token grid (image /
VAE factor / patch), each pixel's text attention (the image → text part of the joint softmax, over the text
slots), tokens.json entries with `encoder` ("clip" / "t5"), and `blocks` (JSON list of the layers read) and
`reading` (softmax | output) in the metadata.
The folder is assembled beside DIR and moved in file by file, so a failure leaves no partial result; a file
the command did not write is never replaced or removed (DIR/.sdclip-attention.json records its own files;
sdclip.attention.output), and DIR is never inside what the model load reads. Progress is drawn on a terminal.
Imported at CLI start-up: torch and diffusers are imported inside `run` only.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from dataclasses import asdict

from sdclip.cli.options import (DTYPES, add_clip_skip_options, add_text_options, finite_float, model_options,
                                seed_number, whole_number)
from sdclip.conventions.presets import POOLED_SOURCES, WEIGHTINGS, Options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attention", help="generate an image and write each token's cross-attention map")
    p.add_argument("--model", required=True,
                   help="diffusers pipeline folder (SD1 / SD2 / SDXL; SD3 / Flux / Chroma), or a single .safetensors "
                        "checkpoint (SD1 / SD2 / SDXL; SD3 / SD3.5, Flux, Chroma: a transformer-only file takes the "
                        "other components from --pipeline-config)")
    p.add_argument("--pipeline-config", metavar="DIR",
                   help="single-file --model offline: a local diffusers folder of the same model type, for its configs "
                        "(and, for a transformer-only SD3 / Flux / Chroma file, its VAE and text encoders)")
    p.add_argument("--text-encoders", nargs="+", metavar="FILE",
                   help="SD3 / Flux / Chroma single-file --model: the text encoders as separate files (ComfyUI's "
                        "clip_l / clip_g / t5xxl .safetensors; a T5 tokenizer folder beside them, as for encode)")
    p.add_argument("--prompt", required=True, help="the prompt")
    p.add_argument("--negative", help="negative prompt (default: none)")
    p.add_argument("--steps", type=whole_number, default=20, help="denoising steps (default 20)")
    p.add_argument("--seed", type=seed_number, default=0, help="generator seed (default 0)")
    p.add_argument("--size", help="WxH in pixels (default: the pipeline's)")
    p.add_argument("--guidance", type=finite_float, default=None,
                   help="guidance scale (default: 7.5; SD3 7.0, Flux's distilled guidance 3.5, Chroma 3.0)")
    p.add_argument("--true-cfg-scale", type=finite_float, default=None,
                   help="Flux: true CFG scale (> 1 runs the transformer on --negative too; maps from the positive pass)")
    p.add_argument("--trace-steps", help="START:END, 0-based steps to trace (default all)")
    p.add_argument("--resolutions", help="comma-separated downsampling factors to trace, e.g. 2,4 (default all)")
    p.add_argument("--blocks", choices=("joint", "single", "both"),
                   help="SD3 / Flux / Chroma: the blocks to read (default both; SD3 has joint blocks only)")
    p.add_argument("--reading", choices=("softmax", "output"),
                   help="SD3 / Flux / Chroma: softmax probabilities (default) or ConceptAttention's output-space scores")
    add_clip_skip_options(p)
    p.add_argument("--weighting", choices=WEIGHTINGS, help="weighting formula (default: the preset's)")
    p.add_argument("--pooled-source", choices=POOLED_SOURCES, help="SDXL pooled vector source row")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="pipeline precision (default fp32)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, mps …")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (never inside the model; files it did not write are never replaced)")
    add_text_options(p)
    p.set_defaults(func=run)


def parse_size(text: str) -> tuple[int, int]:
    """"WxH" → (W, H)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise ValueError(f"--size wants WxH in pixels (e.g. 512x512), got {text!r}")
    return int(m[1]), int(m[2])


def parse_steps(text: str | None, steps: int) -> range | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    if not m:
        raise ValueError(f"--trace-steps wants START:END (0-based, END excluded), got {text!r}")
    lo, hi = int(m[1] or 0), int(m[2] or steps)
    if not 0 <= lo < hi:
        raise ValueError(f"--trace-steps {text!r} selects no step")
    return range(lo, hi)


def parse_resolutions(text: str | None) -> set[int] | None:
    if text is None:
        return None
    try:
        out = {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        out = set()
    if not out or any(f < 1 or f & (f - 1) for f in out):
        raise ValueError(f"--resolutions wants powers of two such as 1,2,4,8, got {text!r}")
    return out


def run(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise ValueError("--steps must be ≥ 1")
    size = parse_size(args.size) if args.size else None
    traced_steps = parse_steps(args.trace_steps, args.steps)
    resolutions = parse_resolutions(args.resolutions)
    options = model_options(args)
    model = Path(args.model)
    config = getattr(args, "pipeline_config", None)

    import torch

    from sdclip.attention.load import check_model, config_source, load_pipeline
    from sdclip.attention.negatives import check_true_cfg
    from sdclip.attention.output import WRITES, check_folder
    from sdclip.encoder.device import resolve_device
    from sdclip.encoder.loading.reads import model_reads
    from sdclip.outputs import check_output_folder

    # everything that can be refused is refused here, before the pipeline loads and before any folder is made
    check_model(model)
    if config is not None and not (Path(config) / "model_index.json").is_file():
        raise ValueError(f"--pipeline-config wants a local diffusers pipeline folder (with model_index.json): {config}")
    check_true_cfg(args.true_cfg_scale, args.negative)
    device = resolve_device(args.device)
    configs = config_source(model, config)  # an MM-DiT file's configs (and components it lacks) are read from there
    encoder_files = [Path(f) for f in args.text_encoders or ()]
    if encoder_files and not model.is_file():
        raise ValueError("--text-encoders is for a single-file --model (a folder holds its own text encoders)")
    for f in encoder_files:
        if not f.is_file() or f.suffix.lower() != ".safetensors":
            raise ValueError(f"--text-encoders {f}: not a .safetensors file")
    check_output_folder(args.out, model_reads([model, *encoder_files, *([configs] if configs else [])]), writes=WRITES)
    check_folder(args.out)

    # the libraries' own start-up notes (accelerate, torchvision) are not this command's output; a user's setting wins
    quiet = [name for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY") if name not in os.environ]
    for name in quiet:
        os.environ[name] = "error"  # read when the libraries are first imported
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    if "DIFFUSERS_VERBOSITY" in quiet:  # and set now, for a process that had imported them already
        diffusers_logging.set_verbosity_error()
    if "TRANSFORMERS_VERBOSITY" in quiet:
        transformers_logging.set_verbosity_error()

    from sdclip.attention import trace
    from sdclip.attention.progress import progress
    from sdclip.pipelines import conditioner_from_pipeline

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    with progress(args.steps) as shown:
        shown.stage("loading the pipeline")
        pipe = load_pipeline(model, dtype, config, own_encoders=bool(encoder_files))
        if getattr(pipe, "unet", None) is None:
            return _run_mmdit(args, pipe, device, size, traced_steps, options, model, shown, encoder_files)
        if args.blocks or args.reading or args.true_cfg_scale is not None:
            raise ValueError("--blocks, --reading and --true-cfg-scale are for SD3 / Flux / Chroma pipelines (MM-DiT); "
                             f"{args.model} is a {type(pipe).__name__}")
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        scale = int(pipe.vae_scale_factor)
        if size is None:
            side = int(pipe.unet.config.sample_size) * scale
            size = (side, side)
        step = max(8, scale)  # diffusers' own rule for SD pipelines, and whole latent pixels
        if size[0] % step or size[1] % step:
            raise ValueError(f"--size {size[0]}x{size[1]}: both sides must be multiples of {step} for this pipeline")

        shown.stage("encoding the prompt")
        cond = conditioner_from_pipeline(pipe, **_overrides(options, args.preset))
        pair = cond(args.prompt, args.negative)
        kwargs = {k: v.to(device=pipe.device, dtype=pipe.dtype) for k, v in pair.diffusers_kwargs().items()}
        shown.denoising()
        with trace(pipe, conditioner=cond, prompt=args.prompt, steps=traced_steps, resolutions=resolutions) as tc:
            image = pipe(
                **kwargs,
                num_inference_steps=args.steps,
                guidance_scale=7.5 if args.guidance is None else args.guidance,
                generator=torch.Generator().manual_seed(args.seed),
                width=size[0],
                height=size[1],
                output_type="pil",
                callback_on_step_end=shown.step_callback,
            ).images[0]
        shown.stage("writing maps and pictures")
        maps = tc.maps()
        write_result(args.out, maps, image, {"prompt": args.prompt, "negative": args.negative or "",
                                             "seed": str(args.seed), "steps": str(args.steps), "model": str(model)})
    print(f"wrote {args.out}: maps {list(maps.maps.shape)} ({len(maps.words())} words), image {size[0]}x{size[1]}")
    return 0


def _run_mmdit(args: argparse.Namespace, pipe, device, size, traced_steps, options: Options, model: Path, shown,  # noqa: ANN001
               encoder_files: list[Path]) -> int:
    """SD3 / Flux / Chroma: one traced generation (sdclip.attention.mmdit_generate), the same files; with
    --text-encoders, sdclip's Conditioner over those files (the pipeline holds none)."""
    import json

    from sdclip.attention.mmdit import mmdit_kind
    from sdclip.attention.mmdit_generate import generate
    from sdclip.attention.negatives import negative_read, true_cfg_kwargs

    if args.resolutions is not None:
        raise ValueError(f"--resolutions is for UNet pipelines: a {type(pipe).__name__} reads one token grid")
    kind = mmdit_kind(pipe)
    true_cfg = true_cfg_kwargs(kind, args.true_cfg_scale, args.negative)  # refused here, before the prompt is encoded
    if args.negative is not None and not negative_read(kind, args.true_cfg_scale):
        shown.note(f"sdclip: note: a {type(pipe).__name__} reads --negative only with --true-cfg-scale > 1 (true CFG); "
                   "this generation does not read it")
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    shown.stage("encoding the prompt")
    cond = None
    if encoder_files:
        from sdclip.conditioner import Conditioner

        cond = Conditioner.from_pretrained(encoder_files, family=kind, dtype=pipe.dtype, device=device,
                                           **_overrides(options, args.preset))
    maps, image, size = generate(
        pipe, prompt=args.prompt, negative=args.negative, steps=args.steps, seed=args.seed, size=size,
        guidance=args.guidance, true_cfg=args.true_cfg_scale, conditioner=cond,
        conditioner_options=_overrides(options, args.preset), trace_steps=traced_steps,
        blocks=args.blocks or "both", reading=args.reading or "softmax", callback=shown.step_callback,
        started=shown.denoising,
    )
    shown.stage("writing maps and pictures")
    write_result(args.out, maps, image, {"prompt": args.prompt, "negative": args.negative or "", "seed": str(args.seed),
                                         "steps": str(args.steps), "model": str(model),
                                         "blocks": json.dumps(maps.info["blocks"]), "reading": maps.info["reading"],
                                         "layout": "[N, H, W] at the image-token grid (image / VAE factor / patch)",
                                         **{k: str(v) for k, v in true_cfg.items()}})
    print(f"wrote {args.out}: maps {list(maps.maps.shape)} ({len(maps.words())} words, {len(maps.info['blocks'])} "
          f"blocks), image {size[0]}x{size[1]}")
    return 0


def _overrides(options: Options, preset: str) -> dict:
    """The flags' Options as conditioner_from_pipeline arguments: the same preset, every set field."""
    return {"preset": preset, **{k: v for k, v in asdict(options).items() if v is not None}}


def write_result(out: Path, maps, image, metadata: dict[str, str]) -> None:  # noqa: ANN001
    """Every output file into `out`, replacing only files an earlier run wrote (sdclip.attention.output)."""
    from sdclip.attention.output import write_result as write

    write(out, maps, image, metadata)
