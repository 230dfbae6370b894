"""The model side of the AUTOMATIC1111 oracle (tests/a1111_oracle.py is the text side): each chunk through a
transformers model at A1111's layer, "Original" emphasis, pooled from the first chunk, and the tiny models and
prompts the a1111 tests share.

- encoding per chunk index (batch of one prompt): SD1 ``hidden_states[-clip_skip]`` + final LayerNorm (the
  last hidden state for clip skip 1); SD2 the penultimate layer + final LayerNorm; SDXL both encoders at the
  penultimate layer without final LayerNorm, concatenated on features (L ‖ G), pooled from bigG's projected
  EOS state of the first chunk. For models whose pad is not EOS (OpenCLIP: SD2, SDXL's bigG) every slot after
  the first EOS becomes 0 (``process_tokens``).
- emphasis "Original" (``modules/sd_emphasis.py``): z' = z·w, z' *= mean(z) / mean(z') with scalar means
  over the whole chunk (batch of one); SDXL: per encoder.
- cond/uncond of different chunk counts: the shorter is padded with the encoding of the empty prompt
  (``pad_cond_uncond``), one 77-slot chunk per missing chunk.
"""

from __future__ import annotations

import functools

import torch
from a1111_oracle import EOS, tokenize_line
from tiny_models import tiny_family
from transformers import CLIPTextModelWithProjection

from sdclip.conditioner import Conditioner
from sdclip.conventions.presets import Options
from sdclip.encoder import encoders_from_modules


def _text_model(model):
    return model.text_model if isinstance(model, CLIPTextModelWithProjection) else model


@torch.no_grad()
def encode_chunk(
    model,
    ids: list[int],
    *,
    pad_zero: bool,
    layer: int,
    final_norm: bool,
    fixes: list[tuple[int, str]] = (),
    embeddings: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk through a transformers model: hidden_states[layer] (+ final LN) [77, D] and, for a
    projection model, its pooled text_embeds [P]. Embedding vectors replace the token embeddings of their
    slots (after BOS), as A1111's EmbeddingsWithFixes does."""
    ids = list(ids)
    if pad_zero:
        first = ids.index(EOS)
        ids = ids[: first + 1] + [0] * (len(ids) - first - 1)
    t = _text_model(model)
    handle = None
    if fixes:

        def hook(module, inputs, out):  # noqa: ANN001, ANN202
            out = out.clone()
            for slot, name in fixes:
                vec = embeddings[name]
                out[0, slot + 1 : slot + 1 + vec.shape[0]] = vec.to(out.dtype)
            return out

        handle = t.embeddings.token_embedding.register_forward_hook(hook)
    try:
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    finally:
        if handle is not None:
            handle.remove()
    hs = out.hidden_states[layer][0]
    if final_norm:
        hs = t.final_layer_norm(hs)
    pooled = out.text_embeds[0] if isinstance(model, CLIPTextModelWithProjection) else None
    return hs, pooled


def emphasis_original(z: torch.Tensor, mults: list[float]) -> torch.Tensor:
    original = z.mean()
    weighted = z * torch.tensor(mults).reshape(-1, 1)
    return weighted * (original / weighted.mean())


#: family → per encoder: (pad with 0 after EOS?, final LN?) ; the layer comes from the clip skip
_ENCODERS = {
    "sd1": ((False, True),),
    "sd2": ((True, True),),
    "sdxl": ((False, False), (True, False)),
}


def a1111_encode(
    models, family: str, text: str, *, clip_skip: int = 1, n_chunks: int | None = None, embeddings=None
) -> tuple[torch.Tensor, torch.Tensor | None, list[float]]:
    """(cond [77k, D], pooled or None, |chunk means|) as AUTOMATIC1111 computes it; `n_chunks` pads with
    empty-prompt chunks (pad_cond_uncond)."""
    chunks = tokenize_line(text, embeddings=embeddings)
    empty = tokenize_line("")[0]
    if n_chunks is not None:
        chunks = chunks + [empty] * (n_chunks - len(chunks))
    layer = {"sd1": -clip_skip, "sd2": -2, "sdxl": -2}[family]
    per_encoder, pooled, means = [], None, []
    for model, (pad_zero, final_norm) in zip(models, _ENCODERS[family]):
        zs = []
        for k, (ids, mults, fixes) in enumerate(chunks):
            if family == "sd1" and clip_skip == 1:
                z, p = encode_chunk(model, ids, pad_zero=pad_zero, layer=-1, final_norm=False, fixes=fixes, embeddings=embeddings)
                z = _text_model(model).final_layer_norm(z)  # last_hidden_state
            else:
                z, p = encode_chunk(model, ids, pad_zero=pad_zero, layer=layer, final_norm=final_norm, fixes=fixes, embeddings=embeddings)
            means.append(abs(float(z.mean())))
            zs.append(emphasis_original(z, mults))
            if k == 0 and p is not None:
                pooled = p
        per_encoder.append(torch.cat(zs, dim=0))
    return torch.cat(per_encoder, dim=-1), pooled, means




@functools.lru_cache(maxsize=None)
def family_models(family: str):
    """Tiny random transformers models of a family (built once per process).

    A random model's hidden states have a mean near 0, where A1111's mean restoration mean(z)/mean(z·w)
    is ill-conditioned (a 1e-6 difference becomes a 1 % one); a constant added to the position embedding
    and the final LayerNorm bias moves every chunk mean well away from 0 (asserted per chunk)."""
    models = tiny_family(family, seed=7).models
    with torch.no_grad():
        for m in models:
            t = _text_model(m)
            t.embeddings.position_embedding.weight.add_(0.25)
            t.final_layer_norm.bias.add_(0.25)
    return models


def conditioner(family: str, **overrides) -> Conditioner:
    models = family_models(family)
    loaded = encoders_from_modules(models)
    assert loaded.family == family
    return Conditioner(loaded.encoders, family, Options.preset("a1111", **overrides))


_TAGS = (
    "masterpiece", "best quality", "a red fox", "snowy pine forest", "golden hour light", "volumetric fog",
    "intricate fur detail", "sharp focus", "depth of field", "cinematic composition", "soft rim lighting",
    "highly detailed background", "ancient stone bridge", "river reflections", "distant mountains",
)


def long_prompt(n_tags: int, seed: int = 0) -> str:
    """Comma-separated tags with A1111 syntax sprinkled in (weights, nesting, [x], escapes)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_tags):
        tag = _TAGS[int(torch.randint(len(_TAGS), (1,), generator=g))]
        kind = i % 6
        if kind == 1:
            tag = f"({tag}:1.{int(torch.randint(1, 6, (1,), generator=g))})"
        elif kind == 3:
            tag = f"(({tag}))"
        elif kind == 4:
            tag = f"[{tag}]"
        out.append(tag)
    return ", ".join(out)
