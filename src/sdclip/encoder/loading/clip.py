"""Every real weight layout → our encoder's keys; family and shape detected from the keys themselves.

Layouts read without conversion (key spellings checked against diffusers' single-file loader and
open_clip / OpenAI CLIP / Long-CLIP model code):

- HF transformers (`hf`): `{p}embeddings.token_embedding.weight`, `{p}embeddings.position_embedding.weight`,
  `{p}encoder.layers.N.self_attn.{q,k,v,out}_proj.*`, `…layer_norm{1,2}.*`, `…mlp.fc{1,2}.*`,
  `{p}final_layer_norm.*`, root `text_projection.weight` [P, D] (y = x @ W.T). p is `text_model.` (every
  4.x save, and 5.x CLIPTextModelWithProjection), "" (5.x CLIPTextModel), `cond_stage_model.transformer.
  text_model.` (SD1 single file; a few old ones lack `text_model.`), `conditioner.embedders.0.transformer.
  text_model.` (SDXL's ViT-L).
- open_clip / OpenAI (`openclip`): `{p}token_embedding.weight`, `{p}positional_embedding`,
  `{p}transformer.resblocks.N.{ln_1, attn.in_proj_weight/bias (q;k;v stacked), attn.out_proj, ln_2,
  mlp.c_fc, mlp.c_proj}`, `{p}ln_final.*`, `{p}text_projection` [D, P] (y = x @ W). p is "" (OpenAI / open_clip
  / Long-CLIP state dicts), `cond_stage_model.model.` (SD2), `conditioner.embedders.1.model.` (SDXL bigG).
- Long-CLIP checkpoints hold `positional_embedding` and `positional_embedding_res` (both 248 rows):
  Long-CLIP adds the first for positions < 20 and the second from 20 on (mask1/mask2); merged here.
- Heads are not visible in weights: config.json says, else head width 64 (true of every CLIP text tower).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from sdclip.bounded_files import read_json
from sdclip.encoder.loading.checkpoint import (CheckpointError, MemoryTensors, PickleFile, TensorFile, open_tensor_file,
                                               overflow_message, read_checked)
from sdclip.conventions.family import FAMILIES, EncoderRole, get_family, one_tower_family
from sdclip.encoder.config import EncoderConfig
from sdclip.tokenizer.stream import VOCAB_SIZE
from sdclip.encoder.model import CLIPTextEncoder
from sdclip.encoder.loading.wrong_folder import not_text_encoder

Layout = Literal["hf", "openclip"]

#: Long-CLIP keeps CLIP's first 20 positions (positional_embedding) and stretches the rest (…_res)
LONGCLIP_KEEP = 20

#: single-file prefixes → (family, index of the family's role); "" = a bare state dict, family from shapes
KNOWN_PREFIXES: dict[tuple[Layout, str], tuple[str | None, int | None]] = {
    ("hf", "cond_stage_model.transformer.text_model."): ("sd1", 0),
    ("hf", "cond_stage_model.transformer."): ("sd1", 0),
    ("hf", "conditioner.embedders.0.transformer.text_model."): ("sdxl", 0),
    ("hf", "text_encoders.clip_l.transformer.text_model."): ("sd3", 0),
    ("hf", "text_encoders.clip_g.transformer.text_model."): ("sd3", 1),
    ("openclip", "cond_stage_model.model."): ("sd2", 0),
    ("openclip", "conditioner.embedders.1.model."): ("sdxl", 1),
    ("hf", "text_model."): (None, None),
    ("hf", ""): (None, None),
    ("openclip", ""): (None, None),
}
#: keys of other models that bare state dicts carry next to the text tower (HF CLIPModel, OpenAI CLIP)
FOREIGN_BARE = ("vision_model.", "visual_projection.", "visual.", "logit_scale", "input_resolution",
                "context_length", "vocab_size", "mask_net.")


@dataclass
class LoadedEncoders:
    """What load_text_encoders returns. encoders are ordered as the pipeline concatenates them:
    sd1 (L,), sd2 (H,), sdxl (L, G), longclip (L248,)."""

    family: str
    encoders: tuple[CLIPTextEncoder, ...]
    tokenizer_dirs: tuple[Path | None, ...] = ()
    fingerprint: str = ""
    source: str = ""
    t5_tokenizer_dir: Path | None = None  #: SD3 / Flux: the T5 tokenizer folder (encoders hold T5 or None)


@dataclass
class Part:
    """Where one encoder's tensors live inside one file."""

    file: TensorFile
    layout: Layout
    prefix: str
    role: EncoderRole | None = None
    hf_config: dict | None = None
    unstored: int = 0  #: blocks the architecture has but the file leaves out (diffusers SD2: 1)
    sample: list = field(default_factory=list)  #: (our key, shape, dtype, bytes) for the fingerprint


# ---- finding the parts ----------------------------------------------------------------------------

def _anchor(layout: Layout) -> str:
    return "embeddings.token_embedding.weight" if layout == "hf" else "token_embedding.weight"


def find_parts(f: TensorFile) -> list[Part]:
    """Every text tower in a file, by its token-embedding key; unknown prefixes are an error."""
    parts, unknown = [], []
    for key in f.keys():
        for layout in ("hf", "openclip"):
            anchor = _anchor(layout)
            if key == anchor or key.endswith("." + anchor):
                prefix = key[: len(key) - len(anchor)]
                if layout == "openclip" and prefix.endswith("embeddings."):
                    continue  # the hf anchor also ends with token_embedding.weight
                if (layout, prefix) in KNOWN_PREFIXES:
                    fam, index = KNOWN_PREFIXES[(layout, prefix)]
                    role = FAMILIES[fam].roles[index] if fam is not None and index is not None else None
                    parts.append(Part(f, layout, prefix, role))
                else:
                    unknown.append(key)
                break
    if not parts:
        raise CheckpointError(describe_unknown(f, unknown))
    return parts


def describe_unknown(f: TensorFile, anchors: list[str]) -> str:
    """An error text listing what the file holds: top key prefixes and counts."""
    counts: dict[str, int] = {}
    for k in f.keys():
        head = ".".join(k.split(".")[:2])
        counts[head] = counts.get(head, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:8]
    found = ", ".join(f"{p}.* ×{n}" for p, n in top) or "nothing"
    extra = f"; text-embedding keys under unknown prefixes: {anchors[:4]}" if anchors else ""
    return (
        f"{f.path}: no CLIP text encoder in a known layout ({len(f.keys())} tensors; found {found}{extra}). "
        "Known: HF transformers, diffusers folders, SD1/SD2/SDXL single files, open_clip/OpenAI, Long-CLIP."
    )


#: more blocks than any CLIP text tower has (ViT-bigG: 32): a key naming layer 10**9 is refused, not counted
MAX_LAYERS = 1024


def _layer_count(part: Part) -> int:
    """Blocks stored under the part's prefix; numbers are checked before anything is sized by them."""
    pat = (re.escape(part.prefix) + (r"encoder\.layers\.(\d+)\." if part.layout == "hf" else r"transformer\.resblocks\.(\d+)\."))
    found: set[int] = set()
    for k in part.file.keys():
        if m := re.match(pat, k):
            digits = m.group(1)
            if len(digits) > len(str(MAX_LAYERS)) or int(digits) >= MAX_LAYERS:
                raise CheckpointError(
                    f"{part.file.path}: {k[:120]!r} names layer {digits[:20]}{'…' if len(digits) > 20 else ''}; "
                    f"a CLIP text encoder has fewer than {MAX_LAYERS} layers"
                )
            found.add(int(digits))
    if not found:
        raise CheckpointError(f"{part.file.path}: text encoder at {part.prefix or '<root>'!r} has no layers")
    n = max(found) + 1
    missing = [i for i in range(n) if i not in found]
    if missing:
        raise CheckpointError(f"{part.file.path}: layers {missing} missing under {part.prefix or '<root>'!r}")
    return n


def _positions(part: Part) -> int | None:
    f = part.file
    pos_key = part.prefix + ("embeddings.position_embedding.weight" if part.layout == "hf" else "positional_embedding")
    return f.shape(pos_key)[0] if pos_key in f else None


def _bare_guess(part: Part) -> str | None:
    """Family of a bare (prefix-less) tower from shapes alone (real widths and position counts only)."""
    positions = _positions(part) or 77
    if part.prefix + "positional_embedding_res" in part.file or positions != 77:
        return one_tower_family(positions=248 if positions == 77 else positions)  # Long-CLIP, test sizes too
    return one_tower_family(width=part.file.shape(part.prefix + _anchor(part.layout))[-1], positions=77)


def _unstored(part: Part, in_pipeline: bool) -> int:
    """Blocks the tower has but the weights leave out. diffusers' SD2 conversion drops the last of ViT-H's
    24 (SD2 never reads it): always so in a pipeline folder or a pipeline's live module; a lone HF folder
    only when it holds exactly that many."""
    tower = part.role.tower if part.role is not None else None
    if tower is None or tower.diffusers_layers is None:
        return 0
    if in_pipeline:
        return tower.depth - tower.diffusers_layers
    stored = int((part.hf_config or {}).get("num_hidden_layers", 0))
    return tower.depth - stored if stored == tower.diffusers_layers else 0


def assign_family(parts: list[Part], family: str | None, where: object) -> str:
    """The family the keys say, reconciled with `family=` (a contradiction is an error)."""
    if family is not None and family not in FAMILIES:
        raise CheckpointError(f"unknown family {family!r}: one of {', '.join(FAMILIES)}")
    said = {KNOWN_PREFIXES[(p.layout, p.prefix)][0] for p in parts}
    if said == {None}:
        if len(parts) != 1:
            raise CheckpointError(f"{where}: {len(parts)} bare text encoders in one file; expected one")
        guess = _bare_guess(parts[0])
        if family is None and guess is None:
            raise CheckpointError(
                f"{where}: a bare text encoder of width {parts[0].file.shape(parts[0].prefix + _anchor(parts[0].layout))[-1]}"
                " does not say its family; pass family='sd1', 'sd2' or 'longclip'"
            )
        if family is not None and guess is not None and guess != family:
            raise CheckpointError(f"{where}: family={family!r} but the weights look like {guess!r}")
        fam = family or guess
        if len(FAMILIES[fam].roles) != 1:
            raise CheckpointError(f"{where}: family {fam!r} needs {len(FAMILIES[fam].roles)} encoders, found one")
        parts[0].role = FAMILIES[fam].roles[0]
        return fam
    if None in said or len(said) != 1:
        raise CheckpointError(f"{where}: text encoders of several families in one file: {sorted(map(str, said))}")
    fam = said.pop()
    if len(parts) == 1 and _positions(parts[0]) != parts[0].role.tower.positions:
        # an SD1-prefixed tower with other positions (Long-CLIP-L saved into an SD1 file)
        width = parts[0].file.shape(parts[0].prefix + _anchor(parts[0].layout))[-1]
        other = one_tower_family(width=width, positions=_positions(parts[0]))
        if other is not None:
            fam, parts[0].role = other, FAMILIES[other].roles[0]
    wanted = FAMILIES[fam].roles
    if sorted(r.name for r in wanted) != sorted(p.role.name for p in parts):
        found = tuple(p.role.name for p in parts)
        raise CheckpointError(f"{where}: {fam} needs encoders {tuple(r.name for r in wanted)}, found {found}")
    if family is not None and family != fam:
        raise CheckpointError(f"{where}: family={family!r} but the keys say {fam!r}")
    parts.sort(key=lambda p: wanted.index(p.role))
    return fam


# ---- mapping one part -----------------------------------------------------------------------------

def _config(part: Part, width: int, vocab: int, positions: int, layers: int, mlp: int) -> EncoderConfig:
    preset = EncoderConfig.of(part.role.tower)
    cfg = part.hf_config or {}
    if positions != preset.positions:
        raise CheckpointError(
            f"{part.file.path}: position embedding has shape ({positions}, {width}), expected {preset.positions} "
            f"positions for a {preset.name} encoder"
        )
    if vocab < VOCAB_SIZE:
        raise CheckpointError(f"{part.file.path}: token embedding has {vocab} rows; CLIP needs {VOCAB_SIZE}")
    heads = int(cfg.get("num_attention_heads", width // 64 if width % 64 == 0 else 0))
    if heads <= 0 or width % heads:
        raise CheckpointError(f"{part.file.path}: cannot tell the heads of a {width}-wide encoder (no config.json)")
    act = cfg.get("hidden_act", preset.act)
    if act not in ("quick_gelu", "gelu"):
        raise CheckpointError(f"{part.file.path}: unsupported activation {act!r}")
    depth = layers + part.unstored
    real = (width, depth) == (preset.width, preset.depth)
    eps = float(cfg.get("layer_norm_eps", preset.eps))
    return EncoderConfig(
        preset.name if real else f"{preset.name}-custom",
        width=width, depth=depth, heads=heads, mlp=mlp, act=act, positions=positions, vocab=vocab,
        projection=None, layers=layers, eps=eps,
    )


class _Reader:
    """Reads a part's tensors by suffix, records what was used, samples bytes for the fingerprint.
    Finiteness is checked after the cast to the requested dtype (build_encoder), not here."""

    def __init__(self, part: Part):
        self.part = part
        self.used: set[str] = set()

    def __call__(self, suffix: str, shape: tuple[int, ...]) -> torch.Tensor:
        key = self.part.prefix + suffix
        t = read_checked(self.part.file, key, shape, finite=False)
        self.used.add(key)
        return t

    def has(self, suffix: str) -> bool:
        return self.part.prefix + suffix in self.part.file


def map_part(part: Part) -> tuple[EncoderConfig, dict[str, torch.Tensor]]:
    """Our state dict for one part; every key under its prefix mapped or explicitly ignored."""
    f, p, hf = part.file, part.prefix, part.layout == "hf"
    rd = _Reader(part)
    tok_key = "embeddings.token_embedding.weight" if hf else "token_embedding.weight"
    pos_key = "embeddings.position_embedding.weight" if hf else "positional_embedding"
    vocab, width = f.shape(p + tok_key)
    if not rd.has(pos_key):
        raise CheckpointError(f"{f.path}: missing tensor {p + pos_key!r}")
    positions = f.shape(p + pos_key)[0]
    layers = _layer_count(part)
    fc = "encoder.layers.0.mlp.fc1.weight" if hf else "transformer.resblocks.0.mlp.c_fc.weight"
    if not rd.has(fc):
        raise CheckpointError(f"{f.path}: missing tensor {p + fc!r}")
    mlp = f.shape(p + fc)[0]
    cfg = _config(part, width, vocab, positions, layers, mlp)
    D, M = width, mlp
    sd: dict[str, torch.Tensor] = {"token_embedding.weight": rd(tok_key, (vocab, D))}
    pos = rd(pos_key, (positions, D))
    if not hf and rd.has("positional_embedding_res"):
        res = rd("positional_embedding_res", (positions, D))
        pos = torch.cat([pos[:LONGCLIP_KEEP], res[LONGCLIP_KEEP:]])
    sd["position_embedding"] = pos
    for i in range(layers):
        o = f"blocks.{i}."
        if hf:
            s = f"encoder.layers.{i}."
            sd[o + "attn.qkv.weight"] = torch.cat([rd(s + f"self_attn.{x}_proj.weight", (D, D)) for x in "qkv"])
            sd[o + "attn.qkv.bias"] = torch.cat([rd(s + f"self_attn.{x}_proj.bias", (D,)) for x in "qkv"])
            names = {"attn.out": ("self_attn.out_proj", (D, D)), "ln_1": ("layer_norm1", None),
                     "ln_2": ("layer_norm2", None), "mlp.fc": ("mlp.fc1", (M, D)), "mlp.proj": ("mlp.fc2", (D, M))}
        else:
            s = f"transformer.resblocks.{i}."
            sd[o + "attn.qkv.weight"] = rd(s + "attn.in_proj_weight", (3 * D, D))
            sd[o + "attn.qkv.bias"] = rd(s + "attn.in_proj_bias", (3 * D,))
            names = {"attn.out": ("attn.out_proj", (D, D)), "ln_1": ("ln_1", None), "ln_2": ("ln_2", None),
                     "mlp.fc": ("mlp.c_fc", (M, D)), "mlp.proj": ("mlp.c_proj", (D, M))}
        for ours, (theirs, wshape) in names.items():
            sd[o + ours + ".weight"] = rd(s + theirs + ".weight", wshape or (D,))
            sd[o + ours + ".bias"] = rd(s + theirs + ".bias", (wshape[0],) if wshape else (D,))
    ln = "final_layer_norm" if hf else "ln_final"
    sd["final_norm.weight"] = rd(ln + ".weight", (D,))
    sd["final_norm.bias"] = rd(ln + ".bias", (D,))
    # the projection: HF keeps it beside `text_model.` (the file root), open_clip next to the tower
    wrapper = p[: -len("text_model.")] if p.endswith("text_model.") else None
    proj_full = (wrapper or "") + "text_projection.weight" if hf else p + "text_projection"
    has_proj = proj_full in f and (not hf or wrapper is not None)
    ignored = {p + "embeddings.position_ids", p + "logit_scale", p + "attn_mask"}
    if part.role.projected and not part.role.tower.projection and not has_proj:
        # SD3 single files keep no CLIP-L projection: diffusers loads an identity (ComfyUI: unprojected)
        sd["projection.weight"] = torch.eye(D)
        cfg = cfg.with_(projection=D)
    elif part.role.tower.projection or part.role.projected:
        if not has_proj:
            raise CheckpointError(f"{f.path}: the {part.role.name} encoder needs its text projection ({proj_full!r}) — missing")
        shp = f.shape(proj_full)
        if hf:
            w = read_checked(f, proj_full, (shp[0], D), finite=False)
        else:
            w = read_checked(f, proj_full, (D, shp[-1]), finite=False).T
        rd.used.add(proj_full)
        sd["projection.weight"] = w
        cfg = cfg.with_(projection=int(w.shape[0]))
    elif has_proj:
        ignored.add(proj_full)  # SD1/SD2/Long-CLIP pipelines never use it
    _check_leftovers(part, rd.used | ignored)
    return cfg, sd


def _check_leftovers(part: Part, accounted: set[str]) -> None:
    p = part.prefix
    foreign = FOREIGN_BARE if p in ("", "text_model.") else ()
    left = [
        k for k in part.file.keys()
        if k.startswith(p) and k not in accounted
        and not any(k[len(p):].startswith(x) or k.startswith(x) for x in foreign)
    ]
    if left:
        raise CheckpointError(
            f"{part.file.path}: {len(left)} unexpected tensor(s) in the text encoder at {p or '<root>'!r}, "
            f"e.g. {left[:5]} — a layout this loader does not know; refusing to guess"
        )


# ---- building ------------------------------------------------------------------------------------

def build_encoder(part: Part, dtype: torch.dtype, device: str | torch.device) -> CLIPTextEncoder:
    """Map, convert and assign one part's tensors into a CLIPTextEncoder (no random init, no copy kept)."""
    cfg, sd = map_part(part)
    part.sample = [(k, tuple(t.shape), str(t.dtype), _strided(t)) for k, t in sd.items()]
    owned = not isinstance(part.file, PickleFile)
    out = {}
    for k, t in sd.items():
        u = t.to(device=device, dtype=dtype)
        if not bool(torch.isfinite(u).all()):  # after the cast: 1e5 is finite in float32, inf in float16
            raise CheckpointError(overflow_message(t, dtype, f"{part.file.path}: the {cfg.name} encoder's {_where(k)}"))
        if not owned and u.data_ptr() == t.data_ptr():
            u = u.clone()  # do not keep a memory-mapped pickle alive
        out[k] = u.contiguous()
    model = CLIPTextEncoder(cfg, device="meta", dtype=dtype)
    model.load_state_dict(out, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def _where(key: str) -> str:
    """Our state-dict key in words: `blocks.3.mlp.fc.weight` → `layers.3 (0-based) mlp.fc.weight`."""
    m = re.match(r"blocks\.(\d+)\.(.+)", key)
    return f"layers.{m.group(1)} (0-based) {m.group(2)}" if m else key


def _strided(t: torch.Tensor, n: int = 64) -> bytes:
    flat = t.reshape(-1)
    return flat[:: max(1, flat.numel() // n)][:n].float().numpy().tobytes()


def fingerprint(family: str, parts: list[Part]) -> str:
    """A cheap, stable id of the weights for cache keys: family, and for every tensor of our mapped state
    dict its name, shape, stored dtype and a strided sample of 64 values. The same weights give the same
    id whatever the layout, file name or dtype asked for; any retrained tensor changes it."""
    h = hashlib.sha256(family.encode())
    for i, part in enumerate(parts):
        for key, shape, dt, data in sorted(part.sample, key=lambda s: s[0]):
            h.update(f"{i}:{key}:{shape}:{dt}".encode() + data)
    return h.hexdigest()[:32]


# ---- sources: folders and files -------------------------------------------------------------------

WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "model.fp16.safetensors",
                "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model.fp16.bin")


#: config.json fields the loader reads, with what they must be (positive whole numbers unless said)
_INT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "max_position_embeddings", "projection_dim", "vocab_size")


def checked_config(cfg: object, where: object) -> dict:
    """A text model's config (a CLIPConfig's `text_config` when nested) with every field the loader reads
    of the right type and range: a wrong value is named here rather than failing later or giving NaN."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where}: config must be a JSON object, found a {type(cfg).__name__}")
    inner = cfg.get("text_config")
    if inner is not None:
        if not isinstance(inner, dict):
            raise CheckpointError(f"{where}: 'text_config' must be an object, found a {type(inner).__name__}")
        cfg = inner or cfg
    for name in _INT_FIELDS:
        value = cfg.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise CheckpointError(f"{where}: {name!r} must be a positive whole number, found {value!r}")
    act = cfg.get("hidden_act")
    if act is not None and not isinstance(act, str):
        raise CheckpointError(f"{where}: 'hidden_act' must be a string, found {act!r}")
    eps = cfg.get("layer_norm_eps")
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float))
                            or not math.isfinite(eps) or eps <= 0):
        raise CheckpointError(f"{where}: 'layer_norm_eps' must be a positive finite number, found {eps!r}")
    return cfg


def _hf_folder_part(folder: Path) -> Part:
    cfg_path = folder / "config.json"
    cfg = read_json(cfg_path, CheckpointError, "unreadable config")
    not_text_encoder(folder, cfg)
    cfg = checked_config(cfg, cfg_path)
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            f = open_tensor_file(folder / name)
            break
    else:
        raise CheckpointError(f"{folder}: config.json but no weights (looked for {', '.join(WEIGHT_NAMES)})")
    parts = [p for p in find_parts(f) if p.prefix in ("", "text_model.") and p.layout == "hf"]
    if len(parts) != 1:
        raise CheckpointError(f"{f.path}: expected one HF text encoder, found {len(parts)}")
    part = parts[0]
    part.hf_config = cfg
    if cfg.get("hidden_act") and cfg.get("hidden_size") and cfg.get("num_hidden_layers"):
        if f.shape(part.prefix + "embeddings.token_embedding.weight")[-1] != cfg["hidden_size"]:
            raise CheckpointError(f"{folder}: config.json hidden_size {cfg['hidden_size']} disagrees with the weights")
    return part


def _folder_role(part: Part) -> str:
    """Family of a one-encoder HF folder from its config (positions, activation), else from its shapes."""
    cfg = part.hf_config or {}
    positions = int(cfg.get("max_position_embeddings", 77))
    act = cfg.get("hidden_act")
    by_config = one_tower_family(positions=positions, act=act) if act else None
    if by_config is not None:
        return by_config
    guess = _bare_guess(part)
    if guess is None:
        raise CheckpointError(f"{part.file.path}: cannot tell the family; pass family=")
    return guess


def _two_encoders(parts: list[Part]) -> tuple[str, list[Part]]:
    """A pipeline's text_encoder and text_encoder_2: the family with two encoders (SDXL), roles in order."""
    two = [f for f in FAMILIES.values() if len(f.roles) == 2 and f.kinds == ("clip",)]
    if len(two) != 1:
        raise CheckpointError(f"cannot tell which two-encoder family this is ({[f.name for f in two]})")
    for part, role in zip(parts, two[0].roles):
        part.role = role
    return two[0].name, parts


def _from_folder(folder: Path, family: str | None) -> tuple[str, list[Part], tuple[Path | None, ...]]:
    if family is not None and family not in FAMILIES:
        raise CheckpointError(f"unknown family {family!r}: one of {', '.join(FAMILIES)}")
    te, te2 = folder / "text_encoder", folder / "text_encoder_2"
    if te.is_dir() or te2.is_dir():  # diffusers pipeline
        tok = tuple(d if d.is_dir() else None for d in (folder / "tokenizer", folder / "tokenizer_2"))
        if te.is_dir() and te2.is_dir():
            fam, parts = _two_encoders([_hf_folder_part(te), _hf_folder_part(te2)])
            toks = tok
        elif te.is_dir():
            part = _hf_folder_part(te)
            fam = _folder_role(part)
            part.role = FAMILIES[fam].roles[0]
            part.unstored = _unstored(part, in_pipeline=True)
            parts, toks = [part], tok[:1]
        else:
            raise CheckpointError(f"{folder}: text_encoder_2/ without text_encoder/ (SDXL refiner?) is not supported")
        if family is not None and family != fam:
            raise CheckpointError(f"{folder}: family={family!r} but the folder holds a {fam!r} pipeline")
        return fam, parts, toks
    if (folder / "config.json").exists():  # a FIFO / device named config.json is read and refused by kind
        part = _hf_folder_part(folder)
        fam = family or _folder_role(part)
        if len(get_family(fam).roles) != 1:
            raise CheckpointError(f"{folder}: one encoder, but family {fam!r} needs {len(FAMILIES[fam].roles)}")
        said = _folder_role(part)
        if said != fam:
            raise CheckpointError(f"{folder}: family={family!r} but config.json says {said!r}")
        part.role = FAMILIES[fam].roles[0]
        part.unstored = _unstored(part, in_pipeline=False)
        has_tok = (folder / "vocab.json").is_file() or (folder / "tokenizer.json").is_file()
        return fam, [part], (folder if has_tok else None,)
    not_text_encoder(folder, None)
    names = sorted(x.name for x in folder.iterdir())[:10]
    raise CheckpointError(
        f"{folder}: neither a diffusers pipeline (text_encoder/) nor an HF model folder (config.json); holds {names}"
    )


def load_clip_source(
    source: Path | TensorFile, family: str | None, dtype: torch.dtype, device: str | torch.device
) -> LoadedEncoders:
    """The CLIP-only families (sd1, sd2, sdxl, longclip) from a folder or an opened file."""
    if isinstance(source, Path):
        fam, parts, toks = _from_folder(source, family)
    else:
        parts = find_parts(source)
        fam = assign_family(parts, family, source.path)
        toks = (None,) * len(parts)
    encoders = tuple(build_encoder(p, dtype, device) for p in parts)
    return LoadedEncoders(fam, encoders, tuple(toks), fingerprint(fam, parts), str(getattr(source, "path", source)))


def encoders_from_modules(models: tuple, *, dtype: torch.dtype | None = None) -> LoadedEncoders:
    """Our encoders from live transformers text models (a diffusers pipeline's `text_encoder`, and
    `text_encoder_2` for SDXL), mapped and checked exactly as their saved files would be. The family
    follows from the models: two → sdxl; one → from its config (positions, activation)."""
    parts = []
    for i, model in enumerate(models):
        sd = {k: v.detach() for k, v in model.state_dict().items()}
        found = [p for p in find_parts(MemoryTensors(sd, f"<{type(model).__name__} {i}>")) if p.layout == "hf"]
        if len(found) != 1:
            raise CheckpointError(f"model {i} ({type(model).__name__}) is not one transformers CLIP text model")
        part = found[0]
        cfg = getattr(model, "config", None)
        part.hf_config = checked_config(cfg.to_dict(), f"model {i} config") if cfg is not None else {}
        parts.append(part)
    if len(parts) == 2:
        fam, parts = _two_encoders(parts)
    elif len(parts) == 1:
        fam = _folder_role(parts[0])
        parts[0].role = FAMILIES[fam].roles[0]
        parts[0].unstored = _unstored(parts[0], in_pipeline=False)
    else:
        raise CheckpointError(f"expected one or two text encoders, got {len(parts)}")
    first = next(models[0].parameters())
    encoders = tuple(build_encoder(p, dtype or first.dtype, first.device) for p in parts)
    return LoadedEncoders(fam, encoders, (None,) * len(parts), fingerprint(fam, parts), "<modules>")
