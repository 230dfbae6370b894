"""Flags every conditioning command shares, defined once: `inspect`, `encode`, and the commands built on
them (`embed`, `attention`, `serve`) read the same names into the same `Options`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace

from sdclip.conventions.family import FAMILIES
from sdclip.conventions.presets import POOLED_SOURCES, PRESETS, WEIGHTINGS, Options, options_from_user
from sdclip.layout import LAYOUTS
from sdclip.syntax import DIALECTS
from sdclip.tokenizer import NORMALIZATIONS
from sdclip.tokenizer.weight_norm import TOKEN_NORMALIZATIONS

DTYPES = ("fp32", "fp16", "bf16")


def add_text_options(p: argparse.ArgumentParser) -> None:
    """Options that decide how text becomes rows (no model needed)."""
    p.add_argument("--preset", choices=PRESETS, default="a1111", help="compatibility preset (default a1111)")
    p.add_argument("--syntax", choices=DIALECTS, help="prompt dialect (default: the preset's)")
    p.add_argument("--layout", choices=LAYOUTS, help="long-prompt layout (default: the preset's)")
    p.add_argument("--normalize", choices=NORMALIZATIONS, help="tokenizer normalisation (default: the preset's: a1111/comfy hf-slow, compel/diffusers hf-fast)")
    p.add_argument("--stride", type=int, help="window layout: tokens between window starts (default 50)")
    p.add_argument("--comma-backtrack", type=int, help="chunk layout: comma backtrack in tokens (default 20)")
    p.add_argument("--max-rows", type=int, help="compress layout: drop lowest-weight tags to fit N rows")
    p.add_argument("--max-sequence-length", type=int,
                   help="SD3 / Flux: T5 positions (default: the family's, SD3 256, Flux 512; comfy preset: the minimum)")
    p.add_argument("--unknown-embedding", choices=("drop", "error"),
                   help="an unknown embedding:NAME (comfy syntax): drop it with a warning as ComfyUI does, or refuse "
                        "(default: the preset's: comfy drop)")
    p.add_argument("--token-normalization", choices=tuple(TOKEN_NORMALIZATIONS),
                   help="ComfyUI_ADV_CLIP_emb token weight normalisation: mean shifts weights to average 1, length "
                        "spreads a word's emphasis over its tokens (default none)")


def add_model_options(p: argparse.ArgumentParser, *, model_required: bool = True) -> None:
    """Options of the commands that run a text encoder."""
    p.add_argument("--model", required=model_required, help="checkpoint file, model/diffusers folder, or hub id")
    p.add_argument("--family", choices=tuple(FAMILIES), help="override the detected model family")
    p.add_argument("--clip-skip", type=int, help="AUTOMATIC1111 convention: 1 = last layer, 2 = penultimate")
    p.add_argument("--weighting", choices=WEIGHTINGS, help="weighting formula (default: the preset's)")
    p.add_argument("--pooled-source", choices=POOLED_SOURCES, help="SDXL pooled vector source row")
    p.add_argument("--embeddings", action="append", default=[], help="textual-inversion file or folder (repeatable)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="encoder precision (default fp32)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, mps …")
    p.add_argument("--row-limit", type=int, default=64,
                   help="refuse prompts that need more rows than this (default 64 ≈ 4,800 tokens; compress fits it)")
    p.add_argument("--pack-weights", action="store_true",
                   help="CPU: 3-27%% faster encoding for a second copy of the encoder weights in memory")
    p.add_argument("--prompt-2", help="diffusers' prompt_2: the text of CLIP-G (SDXL, SD3) or T5 (Flux); default the prompt")
    p.add_argument("--prompt-3", help="diffusers' prompt_3: the text of SD3's T5; default the prompt")


def text_options(args: argparse.Namespace) -> Options:
    """The Options that the text flags name (the preset's, overridden flag by flag)."""
    return options_from_user(
        args.preset,
        syntax=args.syntax,
        layout=args.layout,
        normalize=args.normalize,
        stride=args.stride,
        comma_backtrack=args.comma_backtrack,
        max_rows=args.max_rows,
        unknown_embedding=args.unknown_embedding,
        token_normalization=getattr(args, "token_normalization", None),
        max_sequence_length=getattr(args, "max_sequence_length", None),
    )


def model_options(args: argparse.Namespace) -> Options:
    """text_options plus the encoder-side flags. `--clip-skip` is always AUTOMATIC1111's count."""
    overrides = {"weighting": args.weighting, "pooled_source": args.pooled_source}
    if args.clip_skip is not None:
        overrides.update(clip_skip_convention="a1111", clip_skip=args.clip_skip)
    return replace(text_options(args), **{k: v for k, v in overrides.items() if v is not None})


def embedding_names(specs: Sequence[str]) -> dict[str, int]:
    """`--embedding-name NAME:N` flags → {name: vector count}."""
    out = {}
    for spec in specs:
        name, _, n = spec.rpartition(":")
        if not name or not n.isdigit() or int(n) < 1:
            raise ValueError(f"--embedding-name wants NAME:N (N ≥ 1), got {spec!r}")
        out[name] = int(n)
    return out
