"""The encoder stage for a whole request: which runner serves each of a family's roles, and one planned,
batched pass per encoder over every part of every text (sdclip.encoder.plan describes one batch).

CLIP roles run through `RowEncoder` at the options' layer (textual-inversion vectors numbered once per
request); T5 roles through `T5RowEncoder`, or `ZeroRows` where the pipeline has no T5 (diffusers' zeros).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

from sdclip.conventions.family import FAMILIES, EncoderRole, Family
from sdclip.conventions.presets import Options
from sdclip.encoder.batching import RowCache, RowEncoder, T5RowEncoder, ZeroRows
from sdclip.encoder.model import CLIPTextEncoder
from sdclip.encoder.plan import Encoded, Reencoding, plan_batch, vector_matrix, vector_table
from sdclip.encoder.t5 import T5Encoder
from sdclip.encoder.textual_inversion import EmbeddingLibrary
from sdclip.prepare import PreparedPart, t5_row_length


def check_encoders(encoders: Sequence[object], family: Family, options: Options) -> None:
    """Each encoder fits its role: the right kind, and (at real sizes) the right width."""
    if len(encoders) != len(family.roles):
        raise ValueError(f"family {family.name} needs {len(family.roles)} text encoder(s), got {len(encoders)}")
    real_widths = {r.width for f in FAMILIES.values() for r in f.roles if r.kind == "clip"}
    for enc, role in zip(encoders, family.roles):
        if role.kind == "t5":
            if enc is not None and not isinstance(enc, T5Encoder):
                raise ValueError(f"family {family.name}: encoder {role.name} must be a T5 encoder, got {type(enc).__name__}")
            t5_row_length(options, role, 1)  # refuses a max_sequence_length diffusers refuses
            continue
        if not isinstance(enc, CLIPTextEncoder):
            raise ValueError(f"family {family.name}: encoder {role.name} must be a CLIP text encoder, got {type(enc).__name__}")
        # a real-size encoder of another family is a mistake; test-size models are let through
        if enc.config.width in real_widths and enc.config.width != role.width:
            raise ValueError(
                f"family {family.name}: encoder {role.name} should be {role.width} wide, "
                f"this one is {enc.config.width} (wrong model for this family?)"
            )


def unprojected(enc: CLIPTextEncoder) -> CLIPTextEncoder:
    """The same encoder (shared weights) whose pooled vector skips the text projection."""
    view = copy.copy(enc)
    view._modules = dict(enc._modules)
    view._modules["projection"] = None
    return view


def build_runners(
    encoders: Sequence[object], family: Family, options: Options, *, fingerprint: str, cache: RowCache,
    batch_size: int, t5_width: int | None,
) -> tuple[RowEncoder, ...]:
    """One runner per role, keyed by (model fingerprint, role index) in the shared row cache."""
    ref = next(e for e in encoders if e is not None)
    ref_weight = ref.token_embedding.weight if isinstance(ref, CLIPTextEncoder) else ref.final_norm
    runners: list[RowEncoder] = []
    for i, (enc, role) in enumerate(zip(encoders, family.roles)):
        key = (fingerprint, i)
        if role.kind == "t5":
            runners.append(ZeroRows(t5_width or role.width, ref_weight.dtype, ref_weight.device) if enc is None
                           else T5RowEncoder(enc, key=key, cache=cache, batch_size=max(1, batch_size // 4)))
            continue
        if role.name == "clip_l" and options.clip_l_pooled == "unprojected" and enc.projection is not None:
            enc, key = unprojected(enc), key + ("unprojected",)
        runners.append(RowEncoder(enc, options.layer(role), pooled=i in family.pooled_roles, key=key, cache=cache,
                                  batch_size=batch_size))
    return tuple(runners)


def encode_parts(
    parts: Sequence[PreparedPart],
    family: Family,
    runners: Sequence[RowEncoder],
    reencode: Sequence[Sequence[Reencoding | None]],
    embeddings: EmbeddingLibrary,
    empty_length: Callable[[EncoderRole], int],
) -> list[Encoded]:
    """Every part through every encoder, one planned batch each (rows, re-encodings, the empty row).
    `reencode[e][k]`: what encoder e must re-encode of part k; `empty_length(role)`: a T5 role's row length
    when the request has no text (the empty prompt alone)."""
    clip = [e for e, r in enumerate(family.roles) if r.kind == "clip"]
    table = vector_table([part.stream_for(e).vectors for part in parts for e in clip])
    out: list[Encoded] = []
    for e, (runner, role) in enumerate(zip(runners, family.roles)):
        rows = [p.rows[e] for p in parts]
        if role.kind == "t5":
            length = rows[0].length if rows else empty_length(role)
            batch = plan_batch(rows, [{} for _ in parts], reencode[e], {}, vocab=1 << 30, pad_id=role.pad_id,
                               length=length, empty_ids=role.empty_ids(length))
            out.append(runner.run(batch))
            continue
        enc = runner.encoder
        batch = plan_batch(rows, [p.stream_for(e).vectors for p in parts], reencode[e], table,
                           vocab=enc.config.vocab, pad_id=role.pad_id, length=family.length)
        weight, width = enc.token_embedding.weight, enc.config.width
        vectors = vector_matrix(table, lambda nk, w=width, r=role.name: embeddings.get(nk[0]).for_width(w, r)[nk[1]],
                                width, weight.dtype, weight.device)
        out.append(runner.run(batch, vectors))
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
    if loaded.family in FAMILIES and FAMILIES[loaded.family].has_t5 and t5 is None:
        raise ValueError(
            f"{source}: a {loaded.family} model needs its T5 tokenizer: a folder with tokenizer.json or spiece.model "
            "(diffusers' tokenizer_3/ or tokenizer_2/; put it beside ComfyUI's files as a folder named t5_tokenizer/)"
        )
    return tokenizer, t5
