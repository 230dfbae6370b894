"""The encoder stage for a whole request: which runner serves each of a family's roles, and one planned,
batched pass per encoder over every part of every text (sdclip.encoder.plan describes one batch).

Each role goes through its kind's lane: the torch-free half (sdclip.lanes: empty row, lengths) and the
torch half it names (sdclip.encoder.clip_runner, sdclip.encoder.t5_runner: encoder type, runner, batch).
"""

from __future__ import annotations

from collections.abc import Sequence

from sdclip.conventions.family import FAMILIES, Family
from sdclip.conventions.presets import Options
from sdclip.encoder.batching import RowCache, RowEncoder
from sdclip.encoder.plan import Encoded, Reencoding, vector_table
from sdclip.encoder.runner_lane import RunnerSetup
from sdclip.encoder.textual_inversion import EmbeddingLibrary
from sdclip.lanes import check_options, lane_of, needs_tokenizer, torch_lane, vector_roles
from sdclip.prepare import PreparedPart


def check_encoders(encoders: Sequence[object], family: Family, options: Options) -> None:
    """Each encoder fits its role (its lane says how), and every lane accepts the options."""
    if len(encoders) != len(family.roles):
        raise ValueError(f"family {family.name} needs {len(family.roles)} text encoder(s), got {len(encoders)}")
    for enc, role in zip(encoders, family.roles):
        torch_lane(role.kind).check(enc, role, family)
    check_options(options, family)


def build_runners(
    encoders: Sequence[object], family: Family, options: Options, *, fingerprint: str, cache: RowCache,
    batch_size: int, t5_width: int | None,
) -> tuple[RowEncoder, ...]:
    """One runner per role, keyed by (model fingerprint, role index) in the shared row cache. t5_width: the
    width of the zeros that stand in for a missing encoder (SD3 without its T5)."""
    ref = next(r for e, role in zip(encoders, family.roles) if (r := torch_lane(role.kind).reference(e)) is not None)
    setup = RunnerSetup(fingerprint, cache, batch_size, ref.dtype, ref.device, t5_width)
    return tuple(torch_lane(role.kind).runner(enc, role, i, family, options, setup)
                 for i, (enc, role) in enumerate(zip(encoders, family.roles)))


def encode_parts(
    parts: Sequence[PreparedPart],
    family: Family,
    runners: Sequence[RowEncoder],
    reencode: Sequence[Sequence[Reencoding | None]],
    embeddings: EmbeddingLibrary,
    options: Options,
    with_empty: Sequence[bool] | None = None,
) -> list[Encoded]:
    """Every part through every encoder, one planned batch each (rows, re-encodings, the empty row).
    `reencode[e][k]`: what encoder e must re-encode of part k. The empty row is as long as the rows (or,
    for a request with no text, as its lane says); `with_empty[e]` False leaves it out of encoder e's batch
    (`Encoded.empty` then encodes it on first use)."""
    table = vector_table([part.stream_for(e).vectors for part in parts for e in vector_roles(family)])
    out: list[Encoded] = []
    for e, (runner, role) in enumerate(zip(runners, family.roles)):
        lane = lane_of(role)
        rows = [p.rows[e] for p in parts]
        length = rows[0].length if rows else lane.empty_length(options, family, e)
        out.append(torch_lane(role.kind).encode(runner, rows, [p.stream_for(e) for p in parts], reencode[e], table,
                                                embeddings, role, lane.empty_ids(role, length),
                                                True if with_empty is None else with_empty[e]))
    return out


def model_tokenizers(loaded, normalize: str, source: object):  # noqa: ANN001, ANN201
    """The tokenizers of a loaded model: its own CLIP tokenizer folder where it has one (a pipeline may have
    added tokens, e.g. baked-in textual inversions with rows of their own in the text encoder), else the
    packaged vocabulary (None); and its T5 tokenizer, which T5 families must have."""
    from sdclip.tokenizer import Tokenizer
    from sdclip.tokenizer.t5 import T5Tokenizer

    folder = next((d for d in loaded.tokenizer_dirs if d is not None), None)
    tokenizer = Tokenizer.from_folder(folder, normalize) if folder is not None else None
    t5_dir = getattr(loaded, "t5_tokenizer_dir", None)
    t5 = T5Tokenizer.from_folder(t5_dir) if t5_dir is not None else None
    if loaded.family in FAMILIES and needs_tokenizer(FAMILIES[loaded.family], "t5_tokenizer") and t5 is None:
        raise ValueError(
            f"{source}: a {loaded.family} model needs its T5 tokenizer: a folder with tokenizer.json or spiece.model "
            "(diffusers' tokenizer_3/ or tokenizer_2/; put it beside ComfyUI's files as a folder named t5_tokenizer/)"
        )
    return tokenizer, t5
