"""Flags every conditioning command shares, defined once: `inspect`, `encode`, and the commands built on
them (`embed`, `attention`, `serve`) read the same names into the same `Options`; and the checked number
types that every command's numeric flags use (argparse's `float` takes `nan` and `inf`, and its `int` takes
numbers no C call can hold: `--seed 2**64` failed deep in torch)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import replace

from sdclip.conventions.clip_skip import SKIP_CONVENTIONS, SKIP_MEANINGS
from sdclip.conventions.family import FAMILIES
from sdclip.conventions.presets import POOLED_SOURCES, PRESETS, WEIGHTINGS, Options, options_from_user
from sdclip.layout import LAYOUTS
from sdclip.syntax import DIALECTS
from sdclip.tokenizer import NORMALIZATIONS
from sdclip.tokenizer.weight_norm import TOKEN_NORMALIZATIONS

DTYPES = ("fp32", "fp16", "bf16")
#: digits beyond which a number is not read at all (Python's int() refuses past 4,300 and is slow before)
MAX_DIGITS = 40


class CheckedNumber:
    """An argparse `type` for a numeric flag: a plain number within `low`..`high`, refused otherwise in one
    usage line (argparse's own `invalid value` path). Every numeric flag of every command uses one (a test
    walks the parsers); the command still checks what depends on other flags (--step ≤ --steps …)."""

    kind = "number"

    def __init__(self, low: float | None = None, high: float | None = None, span: str | None = None) -> None:
        self.low, self.high = low, high
        self.span = span or f"{low}..{high}"  #: the range in words, for the refusal

    def convert(self, text: str) -> float | int:
        raise NotImplementedError

    def __call__(self, text: str) -> float | int:
        if len(text.strip()) > MAX_DIGITS:
            raise argparse.ArgumentTypeError(f"{text[:20]!r}… is not a {self.kind} this flag can take")
        try:
            value = self.convert(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {self.kind}") from None
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise argparse.ArgumentTypeError(f"{text} is outside {self.span}")
        return value

    def __repr__(self) -> str:  # argparse names the type in some messages
        return self.kind


class FiniteFloat(CheckedNumber):
    """A finite decimal number: `nan`, `inf` and overflowing literals (`1e999`) are refused."""

    kind = "finite number"

    def convert(self, text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(text)
        return value


class BoundedInt(CheckedNumber):
    """A whole number within a machine integer's range (or a narrower one)."""

    kind = "whole number"

    def convert(self, text: str) -> int:
        return int(text, 10)


finite_float = FiniteFloat()
#: any whole number a signed 64-bit integer holds: the range checks stay with the commands' own messages
whole_number = BoundedInt(-(2**63), 2**63 - 1, "what a 64-bit integer holds")
#: a random generator's seed: torch.Generator.manual_seed takes 0 .. 2**64 - 1
seed_number = BoundedInt(0, 2**64 - 1, "0..2**64-1 (a 64-bit seed)")


def add_text_options(p: argparse.ArgumentParser) -> None:
    """Options that decide how text becomes rows (no model needed)."""
    p.add_argument("--preset", choices=PRESETS, default="a1111", help="compatibility preset (default a1111)")
    p.add_argument("--syntax", choices=DIALECTS, help="prompt dialect (default: the preset's)")
    p.add_argument("--layout", choices=LAYOUTS, help="long-prompt layout (default: the preset's)")
    p.add_argument("--normalize", choices=NORMALIZATIONS, help="tokenizer normalisation (default: the preset's: a1111/comfy hf-slow, compel/diffusers hf-fast)")
    p.add_argument("--stride", type=whole_number, help="window layout: tokens between window starts (default 50)")
    p.add_argument("--comma-backtrack", type=whole_number, help="chunk layout: comma backtrack in tokens (default 20)")
    p.add_argument("--max-rows", type=whole_number, help="compress layout: drop lowest-weight tags to fit N rows")
    p.add_argument("--max-sequence-length", type=whole_number,
                   help="T5 families (SD3, Flux, Chroma, Wan, PixArt-Σ, AuraFlow): T5 positions (default: the family's, e.g. SD3 256, Flux 512, Wan 226; comfy preset: the minimum)")
    p.add_argument("--unknown-embedding", choices=("drop", "error"),
                   help="an unknown embedding:NAME (comfy syntax): drop it with a warning as ComfyUI does, or refuse "
                        "(default: the preset's: comfy drop)")
    p.add_argument("--token-normalization", choices=tuple(TOKEN_NORMALIZATIONS),
                   help="ComfyUI_ADV_CLIP_emb token weight normalisation: mean shifts weights to average 1, length "
                        "spreads a word's emphasis over its tokens (default none)")


def add_model_options(p: argparse.ArgumentParser, *, model_required: bool = True, per_encoder_prompts: bool = True) -> None:
    """Options of the commands that run a text encoder (`per_encoder_prompts`: --prompt-2 / --prompt-3, which
    only commands that take a prompt on the command line have)."""
    p.add_argument("--model", required=model_required, help="checkpoint file, model/diffusers folder, or hub id")
    p.add_argument("--family", choices=tuple(FAMILIES), help="override the detected model family")
    add_clip_skip_options(p)
    p.add_argument("--weighting", choices=WEIGHTINGS, help="weighting formula (default: the preset's)")
    p.add_argument("--pooled-source", choices=POOLED_SOURCES, help="SDXL pooled vector source row")
    p.add_argument("--embeddings", action="append", default=[], help="textual-inversion file or folder (repeatable)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="encoder precision (default fp32)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, mps …")
    p.add_argument("--row-limit", type=whole_number, default=64,
                   help="refuse prompts that need more rows than this (default 64 ≈ 4,800 tokens; compress fits it)")
    p.add_argument("--pack-weights", action="store_true",
                   help="CPU: 3-27%% faster encoding for a second copy of the encoder weights in memory")
    if not per_encoder_prompts:
        return
    p.add_argument("--prompt-2", help="diffusers' prompt_2: the text of CLIP-G (SDXL, SD3) or T5 (Flux); default the prompt")
    p.add_argument("--prompt-3", help="diffusers' prompt_3: the text of SD3's T5; default the prompt")


def add_clip_skip_options(p: argparse.ArgumentParser) -> None:
    """`--clip-skip N` and the convention it is counted in (people bring their number from another tool)."""
    p.add_argument("--clip-skip", type=whole_number, metavar="N",
                   help="the CLIP layer to read, counted in --clip-skip-convention (default: AUTOMATIC1111's "
                        "count, 1 = last layer, 2 = penultimate; a negative N is ComfyUI's, -1 = last layer)")
    p.add_argument("--clip-skip-convention", choices=tuple(SKIP_CONVENTIONS),
                   help="how --clip-skip counts: " + "; ".join(f"{k}: {v}" for k, v in SKIP_MEANINGS.items()))


def clip_skip_overrides(args: argparse.Namespace) -> dict[str, object]:
    """`--clip-skip` / `--clip-skip-convention` → Options fields. Without a convention N counts as
    AUTOMATIC1111's (the stable contract), except a negative N, which only ComfyUI's count can mean."""
    n, convention = args.clip_skip, getattr(args, "clip_skip_convention", None)
    if n is None:
        if convention is not None:
            raise ValueError(f"--clip-skip-convention {convention} says how to read --clip-skip, which is not given")
        return {}
    if convention is None:
        convention = "comfy" if n < 0 else "a1111"
        preset_convention = options_from_user(args.preset).clip_skip_convention
        if n == 1 and preset_convention == "diffusers":
            print(f"sdclip: note: --clip-skip 1 counts as AUTOMATIC1111's (the last layer: no skip); diffusers' "
                  f"clip_skip=1 is --clip-skip-convention diffusers --clip-skip 1", file=sys.stderr)
    return {"clip_skip_convention": convention, "clip_skip": n}


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
    """text_options plus the encoder-side flags, checked (clip skip included, against `--family` when
    given) before any model loads. `--clip-skip` is AUTOMATIC1111's count unless --clip-skip-convention
    says otherwise (or N is negative: ComfyUI's)."""
    overrides = {"weighting": args.weighting, "pooled_source": args.pooled_source, **clip_skip_overrides(args)}
    options = replace(text_options(args), **{k: v for k, v in overrides.items() if v is not None})
    family = getattr(args, "family", None)
    if family is not None:
        options.check_family(family)
    return options


def embedding_names(specs: Sequence[str]) -> dict[str, int]:
    """`--embedding-name NAME:N` flags → {name: vector count}."""
    out = {}
    for spec in specs:
        name, _, n = spec.rpartition(":")
        if not name or not n.isdigit() or int(n) < 1:
            raise ValueError(f"--embedding-name wants NAME:N (N ≥ 1), got {spec!r}")
        out[name] = int(n)
    return out
