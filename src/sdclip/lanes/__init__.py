"""Encoder kinds as lanes: everything that differs between CLIP, T5 (and, next, an LLM) text encoders, found
through one registry, so that no stage asks which kind of encoder it holds. Torch-free.

A family (sdclip.conventions.family) is a list of encoder roles, each of a *kind*. The kind's lane owns:

| a lane owns                        | clip                                  | t5                                     |
|------------------------------------|---------------------------------------|----------------------------------------|
| tokenizer adapter → TokenStream    | exact BPE (sdclip.tokenizer.clip)     | SentencePiece (sdclip.tokenizer.t5)    |
| layout registry → Rows             | truncate / chunk / window / compress / long (sdclip.layout) | max / min / CLIP-length cut (sdclip.layout.t5) |
| empty row, padding                 | [BOS, EOS, pad…], fixed rows          | [`</s>`, pad…], one row, request-wide length |
| runner → hidden, pooled (torch)    | sdclip.encoder.clip_runner            | sdclip.encoder.t5_runner               |

The torch half of a lane is named by a dotted path (`Lane.runner_path`) and imported only by the encoder
stage (`torch_lane`), so prepare / describe / inspect stay torch-free. Adding a kind is adding a lane module,
its runner module and one line in `LANES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from sdclip.conventions.family import EncoderRole, Family
from sdclip.conventions.presets import Options
from sdclip.lanes.base import Lane, RoleInput


def _lanes() -> dict[str, Lane]:
    from sdclip.lanes.clip_lane import CLIP_LANE
    from sdclip.lanes.llm_lane import LLM_LANE
    from sdclip.lanes.t5_lane import T5_LANE

    return {lane.kind: lane for lane in (CLIP_LANE, T5_LANE, LLM_LANE)}


#: encoder kind → its lane: the registry line a new kind adds
LANES: dict[str, Lane] = _lanes()


def get_lane(kind: str) -> Lane:
    try:
        return LANES[kind]
    except KeyError:
        raise ValueError(f"unknown encoder kind {kind!r}; sdclip has lanes for {', '.join(LANES)}") from None


def lane_of(role: EncoderRole) -> Lane:
    return get_lane(role.kind)


def lanes_of(family: Family) -> tuple[Lane, ...]:
    """The lane of each of a family's roles, in role order."""
    return tuple(lane_of(r) for r in family.roles)


def torch_lane(kind: str) -> Any:  # noqa: ANN401 (sdclip.encoder.runner_lane.RunnerLane)
    """The torch half of a kind's lane, imported on first use (only the encoder stage calls this)."""
    module, _, attr = get_lane(kind).runner_path.partition(":")
    return getattr(importlib.import_module(module), attr)


def check_options(options: Options, family: Family) -> None:
    """Every role's lane accepts these options (Long-CLIP's layout, T5's max_sequence_length)."""
    for role in family.roles:
        lane_of(role).check(options, family, role)


def tokenizers_for(family: Family, given: Mapping[str, Any]) -> tuple[Any, ...]:
    """The tokenizer of each role, from the ones given by name (`tokenizer`, `t5_tokenizer`); a one-line
    error naming what a family needs where one is missing."""
    out = []
    for role in family.roles:
        lane = lane_of(role)
        tok = given.get(lane.tokenizer_name)
        if tok is None:
            raise ValueError(lane.missing_tokenizer(family))
        out.append(tok)
    return tuple(out)


def needs_tokenizer(family: Family, name: str) -> bool:
    """Whether one of the family's lanes reads the tokenizer called `name` (`t5_tokenizer`)."""
    return any(lane.tokenizer_name == name for lane in lanes_of(family))


def same_length_rows(family: Family) -> bool:
    """Every lane of the family lays out fixed rows of family.length slots (CLIP-only families)."""
    return all(lane.fixed_rows for lane in lanes_of(family))


def vector_roles(family: Family) -> tuple[int, ...]:
    """Roles whose lane takes textual-inversion vectors."""
    return tuple(e for e, lane in enumerate(lanes_of(family)) if lane.takes_vectors)


__all__ = ["LANES", "Lane", "RoleInput", "check_options", "get_lane", "lane_of", "lanes_of", "needs_tokenizer",
           "same_length_rows", "tokenizers_for", "torch_lane", "vector_roles"]
