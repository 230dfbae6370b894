"""`trace_mmdit(pipe)`: text-attention maps of an MM-DiT pipeline's generation (SD3 / SD3.5, Flux, Chroma).

    cond = conditioner_from_pipeline(pipe)
    with trace_mmdit(pipe, conditioner=cond, prompt=prompt) as tc:
        image = pipe(**pipeline_kwargs(pipe, prompt, conditioner=cond), ...).images[0]
    maps = tc.maps()                         # AttentionMaps at the latent-patch grid: maps.word("fox")
    joint = tc.maps(block="joint")           # one block type; tc.maps(reading="output"): ConceptAttention's

Tracing processors replace every text-reading attention layer of `pipe.transformer` for the block (the
originals come back on exit, even after an error). A pre-hook on the transformer reads, per call, the text
length, the image-token grid, the timestep and the batch: a call with the same timestep as the one before
is the unconditional pass of Flux's true CFG / Chroma's CFG (the pipelines run the conditional one first)
and is not read; SD3 batches [negative, positive], and only the positive half is read.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch

from sdclip.attention.maps import AttentionMaps
from sdclip.attention.mmdit_processors import (BLOCK_TYPES, READINGS, MMDiTState, TracingFluxProcessor,
                                               TracingJointProcessor)
from sdclip.attention.mmdit_slots import clip_tokenizer_slots, conditioning_slots, tokenizer_slots
from sdclip.attention.slots import Slot
from sdclip.attention.trace import guidance_reader

#: blocks= shorthands
BLOCK_CHOICES = {"joint": frozenset({"joint"}), "single": frozenset({"single"}), "both": frozenset(BLOCK_TYPES)}


def mmdit_kind(pipe: object) -> str:
    """"sd3", "flux" or "chroma" (Flux's attention) for an MM-DiT pipeline; a one-line error else."""
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        raise ValueError(f"a {type(pipe).__name__} has no .transformer: MM-DiT maps need an SD3 / Flux / Chroma pipeline")
    name = type(transformer).__name__
    if name.startswith("SD3"):
        return "sd3"
    if name.startswith("Flux"):
        return "flux"
    if name.startswith("Chroma"):
        return "chroma"
    raise ValueError(f"{name} is not an SD3 / Flux / Chroma transformer: no MM-DiT tracing for it")


def check_request(pipe: object, *, steps: int, width: int, height: int) -> None:
    """One-line refusals, before any work, of what an MM-DiT generation cannot trace: no transformer, no
    steps, or an image size that is not a whole number of image tokens (VAE factor × patch on each side)."""
    kind = mmdit_kind(pipe)
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    vae = int(getattr(pipe, "vae_scale_factor", 8))
    patch = int(pipe.transformer.config.patch_size) if kind == "sd3" else 2  # type: ignore[attr-defined]
    step = vae * patch
    if width < 1 or height < 1 or width % step or height % step:
        raise ValueError(f"size {width}x{height}: both sides must be multiples of {step} for this {type(pipe).__name__} "
                         f"(VAE ×{vae}, {patch}×{patch} image tokens)")


def layer_type(key: str) -> str | None:
    """"joint" / "single" for a processor key that reads text, None for the rest (SD3.5's image-only attn2)."""
    if not key.endswith(".attn.processor"):
        return None
    if key.startswith("single_transformer_blocks."):
        return "single"
    if key.startswith("transformer_blocks."):
        return "joint"
    return None


class MMDiTTrace:
    """The running sums of one traced block; `maps()` turns them into AttentionMaps."""

    def __init__(self, pipe: object, state: MMDiTState, kind: str, conditioner: object, prompt: str | None,
                 negative: str | None):
        self.pipe = pipe
        self.state = state
        self.kind = kind
        self.conditioner = conditioner
        self.prompt = prompt
        self.negative = negative

    def maps(self, reading: str = "softmax", block: str | None = None, slots: tuple[Slot, ...] | None = None) -> AttentionMaps:
        """The average over every traced layer, head, conditional item and step, [N, h, w] at the image-token
        grid. reading: "softmax" (at every pixel the N maps sum to 1) or "output" (ConceptAttention's
        output-space scores, needs readings=("output", …) at trace time); block: "joint" / "single" / None (all)."""
        st = self.state
        keys = [k for k in sorted(st.sums) if k[0] == reading and (block is None or k[1] == block)]
        if not keys or st.grid is None:
            what = f"{reading} maps" + (f" of {block} blocks" if block else "")
            raise ValueError(f"no {what} were traced: run the pipeline inside the `with trace_mmdit(...)` block "
                             "(and check the blocks, steps and readings selected)")
        total = sum(st.sums[k] for k in keys) / sum(st.counts[k] for k in keys)
        h, w = st.grid
        maps = total.float().cpu().reshape(-1, h, w)
        n = maps.shape[0]
        if slots is None:
            slots = self._slots(n)
        f = self.patch_pixels()
        info = {
            "model": self.kind,
            "reading": reading,
            "blocks": sorted((n for n in st.layers if block is None or layer_type(n + ".processor") == block), key=_layer_order),
            "block_types": {k[1]: st.counts[k] for k in keys},
            "steps": sorted(st.traced_steps),
        }
        return AttentionMaps(maps, tuple(slots), (h * f, w * f), info)

    def patch_pixels(self) -> int:
        """Image pixels per image token side: the VAE factor × the patch (SD3: patch_size; Flux: 2×2 packing)."""
        vae = int(getattr(self.pipe, "vae_scale_factor", 8))
        if self.kind == "sd3":
            return vae * int(self.pipe.transformer.config.patch_size)  # type: ignore[attr-defined]
        return vae * 2

    def _slots(self, n: int) -> tuple[Slot, ...]:
        if self.prompt is not None and self.conditioner is not None:
            return conditioning_slots(self.conditioner, self.prompt, self.negative, n)
        t5 = _t5_tokenizer(self.pipe)
        if self.prompt is not None and self.kind != "sd3" and t5 is not None:
            return tokenizer_slots(t5, self.prompt, n)
        clip, t5 = getattr(self.pipe, "tokenizer", None), getattr(self.pipe, "tokenizer_3", None)
        if self.prompt is not None and self.kind == "sd3" and clip is not None and t5 is not None and n > 77:
            # the pipeline's own encoding: one CLIP row of 77, then T5 (max_sequence_length)
            head = clip_tokenizer_slots(clip, self.prompt)
            return head + tuple(replace(s, index=77 + s.index) for s in tokenizer_slots(t5, self.prompt, n - 77))
        return tuple(Slot(i, str(i), str(i), "", None, None, 1.0, "token") for i in range(n))


def _t5_tokenizer(pipe: object) -> object | None:
    """Flux's tokenizer_2 or Chroma's tokenizer, where it is a T5 one."""
    for name in ("tokenizer_2", "tokenizer"):
        tok = getattr(pipe, name, None)
        if tok is not None and type(tok).__name__.startswith("T5"):
            return tok
    return None


def _layer_order(name: str) -> tuple[int, int]:
    kind, _, rest = name.partition(".")
    return (0 if kind == "transformer_blocks" else 1, int(rest.split(".")[0]) if rest[:1].isdigit() else 0)


@contextmanager
def trace_mmdit(
    pipe: object,
    *,
    conditioner: object = None,
    prompt: str | None = None,
    negative: str | None = None,
    blocks: str | Collection[str] = "both",
    steps: Collection[int] | None = None,
    readings: Collection[str] = ("softmax",),
    cfg: bool | None = None,
) -> Iterator[MMDiTTrace]:
    """Trace the text attention of `pipe.transformer` while the block runs.

    conditioner / prompt / negative: label the slots (sdclip conditioning; without a conditioner, the prompt
    as the pipeline encodes it: SD3's one CLIP row and T5, Flux's and Chroma's T5, each by its own tokenizer). blocks: "joint",
    "single" (Flux / Chroma), "both", or layer names ("transformer_blocks.3", "single_transformer_blocks.0").
    steps: 0-based denoising steps. readings: "softmax" and / or "output". cfg: whether an SD3 batch is
    [negative, positive] halves (default: the pipeline's own do_classifier_free_guidance).
    """
    kind = mmdit_kind(pipe)
    transformer = pipe.transformer  # type: ignore[attr-defined]
    readings = tuple(readings)
    if not readings or any(r not in READINGS for r in readings):
        raise ValueError(f"readings must be among {', '.join(READINGS)}, got {readings!r}")
    originals = dict(transformer.attn_processors)
    typed = {k: layer_type(k) for k in originals}
    names = None
    if isinstance(blocks, str):
        if blocks not in BLOCK_CHOICES:
            raise ValueError(f"blocks must be joint, single, both or layer names, got {blocks!r}")
        chosen = BLOCK_CHOICES[blocks]
    else:
        names = {b.removesuffix(".attn").removesuffix(".processor") for b in blocks}
        known = {k.removesuffix(".attn.processor") for k, t in typed.items() if t}
        if not names or names - known:
            raise ValueError(f"unknown blocks {sorted(names - known) or names}; this transformer has e.g. {sorted(known)[:3]}")
        chosen = frozenset(BLOCK_TYPES)
    traced = {k: t for k, t in typed.items() if t in chosen and (names is None or k.removesuffix(".attn.processor") in names)}
    if not traced:
        raise ValueError(f"{type(transformer).__name__} has no {'/'.join(sorted(chosen))} blocks to trace")

    state = MMDiTState(blocks=chosen, steps=None if steps is None else frozenset(steps), readings=readings)
    cls = TracingJointProcessor if kind == "sd3" else TracingFluxProcessor
    tracing = {k: cls(state, p, k.removesuffix(".processor"), traced[k]) if k in traced else p for k, p in originals.items()}
    last_t: list[float | None] = [None]

    guided = guidance_reader(pipe, cfg)

    def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        t = kwargs.get("timestep")
        now = None if t is None else float(t.flatten()[0])
        repeat = now is not None and now == last_t[0]
        last_t[0] = now
        if not repeat:
            state.step += 1
        state.text_len = 0 if text is None else int(text.shape[1])
        if kind == "sd3":
            p = int(module.config.patch_size)
            state.grid = (int(hidden.shape[-2]) // p, int(hidden.shape[-1]) // p)
            state.cond = hidden.shape[0] // 2 if hidden.shape[0] >= 2 and guided() else 0
        else:
            state.grid = _grid(kwargs.get("img_ids"), int(hidden.shape[1]))
            state.cond = 0
        state.recording = not repeat and text is not None and (state.steps is None or state.step in state.steps)

    transformer.set_attn_processor(dict(tracing))
    handle = transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield MMDiTTrace(pipe, state, kind, conditioner, prompt, negative)
    finally:
        handle.remove()
        transformer.set_attn_processor(dict(originals))
        state.recording = False


def _grid(img_ids: torch.Tensor | None, tokens: int) -> tuple[int, int]:
    """(h, w) of Flux's packed image tokens, from their position ids (row, column in ids[:, 1:3])."""
    if img_ids is None:
        raise ValueError("the transformer was called without img_ids: cannot place the image tokens")
    ids = img_ids[0] if img_ids.ndim == 3 else img_ids
    h, w = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
    if h * w != tokens:
        raise ValueError(f"{tokens} image tokens are not a {h}×{w} grid (img_ids)")
    return h, w
