"""Captions → fixed-size rows of conditioning: the one place both engines encode.

Every caption gets exactly N = K·L slots: it is encoded with the Conditioner (so its weighting, clip skip
and long-prompt layout are the job's options), then cut to N slots if longer (counted as truncated) or
extended with the empty prompt's encoding if shorter, as a negative prompt is padded
(`sdclip.assemble.combine.pad_with_empty`). A caption's result does not depend on its batch neighbours
beyond fp32 rounding: each is cut back to its own natural length before padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from sdclip.jobs.plan import JobSpec

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
T5_FAMILIES = ("sd3", "flux")


def t5_refusal(family: str) -> str:
    return (f"sdclip embed caches CLIP-only families (sd1, sd2, sdxl, longclip); {family} has a T5 block, whose "
            "fixed-size shards are not built yet: use sdclip encode --prompts-file for now")


def refuse_t5_family(model: str, family: str | None) -> None:
    """Refuse SD3 / Flux before anything loads (a T5 model is many GB): from --family, a pipeline folder's
    model_index.json / folders, or a single .safetensors file's header keys. ValueError (one line)."""
    if family in T5_FAMILIES:
        raise ValueError(t5_refusal(family))
    from sdclip.encoder.loading import sd3_flux
    from sdclip.encoder.loading.checkpoint import CheckpointError, open_tensor_file

    path = Path(model)
    try:
        if path.is_dir():
            found = sd3_flux.pipeline_family(path) or ("sd3 or flux" if sd3_flux.comfy_folder(path) else None)
        elif path.is_file() and path.suffix.lower() == ".safetensors":
            found = "sd3 or flux" if sd3_flux.is_t5_file(open_tensor_file(path)) else None
        else:
            found = None
    except (CheckpointError, OSError, ValueError):
        return  # the loader says what is wrong with the model, in its own words
    if found is not None:
        raise ValueError(t5_refusal(found))


class CaptionEncoder:
    """Loads the job's Conditioner once (per process or Ray actor) and encodes batches of captions."""

    def __init__(self, spec: JobSpec, conditioner=None):  # noqa: ANN001
        from sdclip.conditioner import Conditioner
        from sdclip.conventions.presets import Options

        self.spec = spec
        self.dtype = DTYPES[spec.dtype]
        if conditioner is None:
            conditioner = Conditioner.from_pretrained(
                spec.model, family=spec.family, dtype=self.dtype, device=spec.device,
                embeddings=spec.embeddings, options=Options(**spec.options), pack_weights=spec.pack_weights,
            )
        self.cond = conditioner
        if len(self.cond.family.sequence_blocks) > 1 or any(r.kind != "clip" for r in self.cond.family.roles):
            raise ValueError(t5_refusal(self.cond.family.name))
        self.slots = spec.rows * self.cond.family.length
        self.widths = [enc.config.width for enc in self.cond.encoders]
        self.has_pooled = self.cond.family.pooled_role is not None
        self._empty: torch.Tensor | None = None
        #: results of captions that occur again later in the job (text → (embeds [N, D], pooled [P]))
        self.keep: dict[str, tuple[torch.Tensor, torch.Tensor | None, int]] = {}

    @property
    def fingerprint(self) -> str:
        """The loaded weights' own fingerprint where the Conditioner exposes it (informational)."""
        fp = getattr(self.cond, "fingerprint", None)
        if fp:
            return str(fp)
        rows = getattr(self.cond, "_rows", None)
        return str(rows[0].key[0]) if rows else ""

    def validate(self, text: str) -> int:
        """Natural length in slots of a valid caption; ValueError (one line) for one that cannot be embedded."""
        return self.check(text)[0]

    def check(self, text: str) -> tuple[int, tuple[str, ...]]:
        """(natural length in slots, warnings) of a caption; ValueError (one line) for one that cannot be
        embedded. The rule is `sdclip encode`'s: several AUTOMATIC1111 AND parts are an error (one caption, one
        conditioning), a single part's weight (`a photo, 16:9` is text `16` with weight 9) only a warning."""
        prep = self.cond.prepare(text)
        warnings = list(prep.prompt.warnings)
        if prep.prompt.combine == "and":
            if len(prep.prompt.parts) > 1:
                raise ValueError("AUTOMATIC1111 AND makes several conditionings, a training cache holds one per "
                                 "caption (--preset kohya reads AND as text, as sd-scripts does; or --syntax plain)")
            weight = prep.prompt.parts[0].weight
            if weight != 1.0:
                warnings.append(f"its AUTOMATIC1111 AND weight {weight:g} (a trailing ':{weight:g}') scales guidance "
                                "in A1111 only; the cache ignores it")
        return prep.slots, tuple(warnings)

    def empty(self) -> torch.Tensor:
        if self._empty is None:
            self._empty = self.cond.empty_sequence()
        return self._empty

    def encode(self, texts: Sequence[str], lengths: Sequence[int] | None = None,
               reuse_until: Sequence[int] | None = None, position: int = 0) -> dict[str, torch.Tensor]:
        """[n, N, D] `prompt_embeds` (and [n, P] `pooled_prompt_embeds`) for the texts, in order.

        lengths: natural lengths from the scan (else computed here). reuse_until[i] > position means text i
        occurs again after this batch: its result is kept for that later occurrence (encoded once per job).
        """
        n = len(texts)
        if lengths is None:
            lengths = [self.validate(t) for t in texts]
        todo: dict[str, int] = {}
        for t, length in zip(texts, lengths):
            if t not in self.keep and t not in todo:
                todo[t] = int(length)
        results: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        unique = list(todo)
        for lo in range(0, len(unique), self.spec.batch_size):
            batch = unique[lo : lo + self.spec.batch_size]
            pos = self.cond(batch).positive
            for b, t in enumerate(batch):
                results[t] = (self._fit(pos.embeds[b], todo[t]), pos.pooled[b] if pos.pooled is not None else None)
        embeds, pooled = [], []
        for i, t in enumerate(texts):
            e, p = self.keep[t][:2] if t in self.keep else results[t]
            embeds.append(e)
            pooled.append(p)
            if reuse_until is not None and int(reuse_until[i]) > position and t not in self.keep:
                self.keep[t] = (e, p, int(reuse_until[i]))
        out = {"prompt_embeds": torch.stack(embeds).to(self.dtype).cpu().contiguous()} if n else {}
        if n and self.has_pooled:
            out["pooled_prompt_embeds"] = torch.stack(pooled).to(self.dtype).cpu().contiguous()  # type: ignore[arg-type]
        return out

    def forget_before(self, position: int) -> None:
        """Drop kept results whose caption does not occur at or after index `position`."""
        for t in [t for t, v in self.keep.items() if v[2] < position]:
            del self.keep[t]

    def _fit(self, seq: torch.Tensor, length: int) -> torch.Tensor:
        """This caption's own sequence (the batch padded it to the longest), cut or padded to N slots."""
        from sdclip.assemble.combine import pad_with_empty

        own = seq[:length]
        if length >= self.slots:
            return own[: self.slots]
        return pad_with_empty(own, self.slots, self.empty().to(own.dtype))
