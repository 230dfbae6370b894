"""Conditioners over shared tiny random models, and what the conditioner tests check them with."""

from __future__ import annotations

import functools

import torch
from a1111_models import family_models
from a1111_oracle import BOS, EOS, hf_tokenizer
from tiny_models import tiny_family

from sdclip.conditioner import Conditioner
from sdclip.conventions.presets import Options
from sdclip.encoder import encoders_from_modules
from sdclip.encoder.textual_inversion import EmbeddingLibrary


@functools.lru_cache(maxsize=None)
def encoders_of(family: str):
    models = family_models(family) if family != "longclip" else _longclip_models()
    return encoders_from_modules(models).encoders


@functools.lru_cache(maxsize=None)
def _longclip_models():
    models = tiny_family("longclip", seed=3).models
    with torch.no_grad():  # move hidden-state means away from 0 (see test_conditioner_a1111.family_models)
        models[0].embeddings.position_embedding.weight.add_(0.25)
        models[0].final_layer_norm.bias.add_(0.25)
    return models


def make(family: str = "sd1", preset: str = "a1111", embeddings=None, **overrides) -> Conditioner:
    """A fresh Conditioner (own cache) over the shared tiny models."""
    lib = EmbeddingLibrary(embeddings or ())
    return Conditioner(encoders_of(family), family, Options.preset(preset, **overrides), embeddings=lib)


def models_of(family: str):
    return _longclip_models() if family == "longclip" else family_models(family)


def ids_of(text: str) -> list[int]:
    return hf_tokenizer()([text], add_special_tokens=False)["input_ids"][0]


def row(tokens: list[int], length: int = 77, pad: int = EOS) -> list[int]:
    assert len(tokens) <= length - 2
    return [BOS] + tokens + [EOS] + [pad] * (length - 2 - len(tokens))


@torch.no_grad()
def hf_last(model, rows: list[list[int]]) -> torch.Tensor:
    """transformers' last_hidden_state (final LN applied) [R, L, D]: SD1's default layer."""
    return model(input_ids=torch.tensor(rows)).last_hidden_state


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


class Counter:
    """Counts the rows each of our encoders runs (a forward pre-hook), so tests can prove what was cached."""

    def __init__(self, cond: Conditioner):
        self.rows: list[tuple[int, ...]] = []
        self.handles = [enc.register_forward_pre_hook(self._hook) for enc in cond.encoders[:1]]

    def _hook(self, module, args):  # noqa: ANN001, ANN202
        self.rows.extend(tuple(r) for r in args[0].tolist())

    def close(self) -> None:
        for h in self.handles:
            h.remove()
