"""`sdclip encode`: prompts → a .safetensors file of diffusers-ready conditioning.

Imported by the CLI at start-up, so torch is imported only inside the command itself.
Contract (keep it stable): writes `prompt_embeds` and `negative_prompt_embeds` ([B, N, D]; B = 1 for
--prompt) and, for SDXL, `pooled_prompt_embeds` and `negative_pooled_prompt_embeds` ([B, 1280]).
`--clip-skip N` always uses AUTOMATIC1111's convention (1 = last layer), whatever the preset.
The file is written atomically: a failure leaves any existing --out untouched and no partial file.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import asdict
from collections.abc import Callable
from pathlib import Path

from sdclip.cli.options import add_model_options, add_text_options, model_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="encode prompts with a model's text encoder(s) to a .safetensors file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt")
    src.add_argument("--prompts-file", type=Path, help="one prompt per line, encoded in batches")
    p.add_argument("--negative", help="negative prompt (default: none — the empty prompt, or zeros where the preset says)")
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per batch with --prompts-file")
    add_model_options(p)
    add_text_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from sdclip.conditioner import Conditioner
    if args.batch_size < 1:
        raise ValueError("--batch-size must be ≥ 1")
    if args.out.suffix != ".safetensors":
        raise ValueError(f"--out must be a .safetensors file, got {args.out}")
    options = model_options(args)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    prompts = [args.prompt] if args.prompt is not None else _read_prompts(args.prompts_file)

    cond = Conditioner.from_pretrained(
        args.model, family=args.family, dtype=dtype, device=args.device, embeddings=args.embeddings, options=options,
        pack_weights=args.pack_weights
    )
    texts = prompts + [args.negative or ""]
    length = max(cond.prepare(t).slots for t in texts)  # one N for the whole file, known before encoding
    pairs = []
    if args.prompt is not None:
        pairs.append(cond(prompts, args.negative))
    else:
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            task = progress.add_task("encoding", total=len(prompts))
            for lo in range(0, len(prompts), args.batch_size):
                batch = prompts[lo : lo + args.batch_size]
                pairs.append(cond.encode(batch, args.negative, length=length))
                progress.advance(task, len(batch))
    kwargs = [p.diffusers_kwargs() for p in pairs]
    tensors = {name: torch.cat([k[name] for k in kwargs]).contiguous().cpu() for name in kwargs[0]}
    metadata = {
        "family": cond.family.name,
        "options": json.dumps(asdict(options)),
        "prompts": str(len(prompts)),
    }
    _save_atomic(tensors, args.out, metadata, save_file)
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in tensors.items())
    print(f"wrote {args.out}: {shapes}")
    return 0


def _read_prompts(path: Path) -> list[str]:
    lines = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompt")
    return prompts


def _save_atomic(tensors: dict, out: Path, metadata: dict, save_file: Callable) -> None:  # noqa: ANN001
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
