"""`trace(pipe)`: cross-attention maps of a diffusers UNet pipeline's generation.

    cond = conditioner_from_pipeline(pipe, preset="a1111")
    with trace(pipe, conditioner=cond, prompt=prompt) as tc:
        image = pipe(**cond(prompt, negative).diffusers_kwargs(), ...).images[0]
    maps = tc.maps()                      # AttentionMaps: maps.word("fox"), maps.token(5)

Tracing processors replace the `attn2` ones for the duration of the block (the originals come back on exit,
even after an error); a pre-hook on the UNet counts steps and reads the latent size.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager

import torch

from sdclip.attention.maps import AttentionMaps, upsample
from sdclip.attention.processors import TraceState, TracingAttnProcessor
from sdclip.attention.slots import Slot, slot_table


class Trace:
    """The running sums of one traced block; `maps()` turns them into AttentionMaps."""

    def __init__(self, pipe: object, state: TraceState, conditioner: object = None, prompt: str | None = None):
        self.pipe = pipe
        self.state = state
        self.conditioner = conditioner
        self.prompt = prompt

    def maps(self, slots: tuple[Slot, ...] | None = None) -> AttentionMaps:
        """Average of everything traced, per slot, at the latent size. Slots: given, else the table of the
        traced prompt (trace(..., conditioner=, prompt=)), else bare numbered slots."""
        st = self.state
        if not st.sums or st.latent is None:
            raise ValueError("nothing was traced: run the pipeline inside the `with trace(...)` block "
                             "(and check the steps / resolutions selected)")
        h, w = st.latent
        total = sum(st.counts.values())
        acc = None
        for f in sorted(st.sums):
            part = upsample(st.sums[f] / st.counts[f], (h, w)) * (st.counts[f] / total)
            acc = part if acc is None else acc + part
        maps = acc.float().cpu()
        n = maps.shape[0]
        if slots is None:
            slots = self._slots(n)
        scale = int(getattr(self.pipe, "vae_scale_factor", 8))
        info = {
            "layers": sorted(st.layers),
            "steps": sorted(st.traced_steps),
            "resolutions": {str(f): tuple(st.sums[f].shape[1:]) for f in sorted(st.sums)},
            "head_maps": dict(st.counts),
        }
        return AttentionMaps(maps, tuple(slots), (h * scale, w * scale), info)

    def _slots(self, n: int) -> tuple[Slot, ...]:
        if self.conditioner is not None and self.prompt is not None:
            prepared = self.conditioner.prepare(self.prompt)  # type: ignore[attr-defined]
            return slot_table(prepared, self.conditioner.tokenizer, n)  # type: ignore[attr-defined]
        return tuple(Slot(i, str(i), str(i), "", None, None, 1.0, "token") for i in range(n))


@contextmanager
def trace(
    pipe: object,
    *,
    conditioner: object = None,
    prompt: str | None = None,
    steps: Collection[int] | None = None,
    resolutions: Collection[int] | None = None,
    cfg: bool | None = None,
) -> Iterator[Trace]:
    """Trace the cross-attention of `pipe.unet` while the block runs.

    steps: 0-based UNet calls to trace (e.g. range(5, 20)); resolutions: downsampling factors relative to
    the latent to trace (1 = latent size, 2, 4, 8); cfg: whether batches are [negative, positive] halves
    (default: the pipeline's own `do_classifier_free_guidance` during its call).
    """
    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(unet, "attn_processors"):
        raise ValueError("trace() needs a diffusers UNet pipeline (SD1 / SD2 / SDXL): this one has no .unet")
    originals = dict(unet.attn_processors)
    cross = [k for k in originals if k.endswith("attn2.processor")]
    if not cross:
        raise ValueError("pipe.unet has no cross-attention (attn2) layers to trace")

    state = TraceState(steps=steps, resolutions=resolutions, cfg=guidance_reader(pipe, cfg))
    tracing = {
        k: TracingAttnProcessor(state, p, k.removesuffix(".processor")) if k in cross else p for k, p in originals.items()
    }

    def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        state.begin_step((int(sample.shape[-2]), int(sample.shape[-1])))

    unet.set_attn_processor(dict(tracing))
    handle = unet.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield Trace(pipe, state, conditioner, prompt)
    finally:
        handle.remove()
        unet.set_attn_processor(dict(originals))


def guidance_reader(pipe, cfg: bool | None):  # noqa: ANN001, ANN201
    """A function telling whether the running pipeline call uses classifier-free guidance (its batch then holds
    the unconditional half too): `cfg` where given, else the pipeline's own flag, read at each step."""

    def guided() -> bool:
        if cfg is not None:
            return cfg
        try:
            return bool(getattr(pipe, "do_classifier_free_guidance", False))
        except AttributeError:  # read outside a pipeline call
            return False

    return guided
