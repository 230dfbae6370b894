"""A generated corpus of hostile, broken and odd input files (issue 16), and the entry points they go through.

`build(root)` writes every case under `root` and returns them; `run_case(case)` puts one case through every
entry point that reads its kind of file and returns what happened at each. Used by tests/encoder/test_hostile_files.py
(the whole corpus, every run) and bench/hostile_files.py (the counts for the README).

The rules checked (`Outcome.problems`): an entry point either succeeds with finite conditioning or raises a
documented error (a ValueError subclass: CheckpointError, EmbeddingError, TokenizerFilesError) with a one-line
message that never passes on torch's "weights_only=False" advice and never calls random bytes code; nothing
a pickle asks for ever runs (a marker file that the payloads would create never appears).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import shutil
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file


#: a smaller stand-in than tiny_models' (64 wide, 1 head, 2 layers): dozens of files stay cheap to write
SIZES = {"clip-vit-l-14": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                               hidden_act="quick_gelu", max_position_embeddings=77)}
WIDTH = 64
P = "cond_stage_model.transformer.text_model."  #: the SD1 single-file prefix
PRESETS = ("a1111", "comfy", "compel", "diffusers")
#: phrases that must never reach a user
FORBIDDEN = ("weights_only=False", "weights_only` set to `False", "re-run", "Re-running", "trusted source", "Traceback")


@dataclass
class Case:
    name: str
    kind: str  #: "model" (file or folder), "embedding" (one file), "embedding_dir", "tokenizer"
    path: Path
    expect: str  #: "load": every entry point succeeds; "refuse": the end-to-end path raises a documented error
    match: str = ""  #: a regex the end-to-end refusal must match
    dtype: torch.dtype = torch.float32
    warn: str = ""  #: a regex one of the library's warnings must match
    prompt_word: str = ""  #: for embeddings: the name a prompt uses
    note: str = ""
    isolate: bool = False  #: run in a subprocess with a timeout and a memory cap (it hung or aborted once)


@dataclass
class Outcome:
    case: Case
    results: dict[str, str] = field(default_factory=dict)  #: entry point → "ok", "refused: …" or "CRASH …"
    problems: list[str] = field(default_factory=list)
    executed: bool = False


# ---- helpers ---------------------------------------------------------------------------------------

class _Payload:
    """Pickles to a call that creates `marker` (os.system / builtins.exec / pathlib): must never run."""

    def __init__(self, marker: Path, how: str = "system"):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.marker}",))
        if self.how == "exec":
            return (exec, (f"open({self.marker!r}, 'w').close()",))
        return (Path.touch, (Path(self.marker),))


def marker_of(root: Path) -> Path:
    return Path(root) / "PWNED"


def _safetensors_raw(path: Path, header: object, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def base_state() -> dict[str, torch.Tensor]:
    """The SD1 single-file state dict of the small random model."""
    from tiny_models import hf4_state_dict, tiny_model  # imported here: an isolated case's subprocess needs neither
    model = tiny_model("clip-vit-l-14", seed=3, sizes=SIZES)
    return {"cond_stage_model.transformer." + k: v for k, v in hf4_state_dict(model).items()}


def _hf_folder(folder: Path, sd: dict[str, torch.Tensor] | None = None, config: object = None,
               config_bytes: bytes | None = None, _made: dict = {}) -> Path:  # noqa: B006 - one template per process
    """An HF model folder (config.json, model.safetensors, tokenizer files) copied from one template."""
    if "template" not in _made or not _made["template"].exists():
        from clip_files import write_tokenizer
        from tiny_models import hf4_state_dict, tiny_model

        model = tiny_model("clip-vit-l-14", seed=3, sizes=SIZES)
        t = folder.parent / ".hf-template"
        t.mkdir(parents=True, exist_ok=True)
        cfg = model.config.to_dict()
        cfg["architectures"] = ["CLIPTextModel"]
        (t / "config.json").write_text(json.dumps(cfg, default=str))
        save_file(hf4_state_dict(model), str(t / "model.safetensors"))
        write_tokenizer(t)
        _made["template"], _made["config"] = t, cfg
    shutil.copytree(_made["template"], folder)
    if config_bytes is not None:
        (folder / "config.json").write_bytes(config_bytes)
    elif config is not None:
        (folder / "config.json").write_text(json.dumps(config(dict(_made["config"])), default=str))
    if sd is not None:
        save_file(sd, str(folder / "model.safetensors"))
    return folder


def _a1111(path: Path, vec: torch.Tensor, **extra) -> Path:
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": path.stem, "step": 1, **extra}, path)
    return path


# ---- the corpus ------------------------------------------------------------------------------------

def build(root: Path) -> list[Case]:
    """Write every case under `root` (a fresh folder) and return them."""
    root = Path(root)
    m, e, d = root / "models", root / "embeddings", root / "embedding_dirs"
    for x in (m, e, d):
        x.mkdir(parents=True, exist_ok=True)
    marker = marker_of(root)
    cases: list[Case] = []

    def model(name: str, expect: str, match: str = "", **kw) -> Path:
        path = m / name
        cases.append(Case(name, "model", path, expect, match, **kw))
        return path

    sd = base_state()
    save_file(sd, str(model("good.safetensors", "load")))
    torch.save({"state_dict": sd, "global_step": 1}, model("good.ckpt", "load"))
    raw = (m / "good.safetensors").read_bytes()
    ckpt = (m / "good.ckpt").read_bytes()

    # -- broken safetensors
    model("truncated.safetensors", "refuse", "safetensors").write_bytes(raw[: len(raw) // 2])
    model("header-only.safetensors", "refuse", "safetensors").write_bytes(raw[:8])
    (m / "huge-header-length.safetensors").write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    cases.append(Case("huge-header-length.safetensors", "model", m / "huge-header-length.safetensors", "refuse", "safetensors"))
    _safetensors_raw(model("shape-beyond-file.safetensors", "refuse", "safetensors"),
                     {P + "embeddings.token_embedding.weight": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 64]}}, bytes(64))
    _safetensors_raw(model("shape-overflow.safetensors", "refuse", "safetensors"),
                     {"a": {"dtype": "F32", "shape": [1 << 31, 1 << 31], "data_offsets": [0, (1 << 64) - 1]}}, bytes(64))
    _safetensors_raw(model("offsets-past-end.safetensors", "refuse", "safetensors"),
                     {"a": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 4 << 40]}}, bytes(64))
    _safetensors_raw(model("header-json-list.safetensors", "refuse", "safetensors"), [1, 2, 3], bytes(8))
    _safetensors_raw(model("header-not-utf8.safetensors", "refuse", "safetensors"), b'{"\xff\xfe": 1}', bytes(8))
    _safetensors_raw(model("header-deep.safetensors", "refuse", "safetensors"), b"[" * 100_000 + b"]" * 100_000)

    # -- random bytes, empty files, unknown formats
    rng = torch.Generator().manual_seed(0)
    noise = bytes(torch.randint(0, 256, (8192,), generator=rng, dtype=torch.uint8).tolist())
    for name in ("random.safetensors", "random.ckpt", "random.bin", "random.weights"):
        model(name, "refuse", "not a (checkpoint sdclip can read|readable safetensors)").write_bytes(noise)
    model("random-pickle-magic.pt", "refuse", "not a checkpoint sdclip can read").write_bytes(b"\x80\x02" + noise)
    model("empty.ckpt", "refuse", "empty").write_bytes(b"")
    model("empty.safetensors", "refuse", "safetensors").write_bytes(b"")
    with zipfile.ZipFile(model("zip-not-torch.ckpt", "refuse", "not a checkpoint sdclip can read"), "w") as z:
        z.writestr("hello.txt", "hi")

    # -- pickles that would run code (the marker must never appear) and plain pickles
    torch.save({"state_dict": sd, "x": _Payload(marker)}, model("evil-system.ckpt", "refuse", "objects other than tensors"))
    torch.save({"state_dict": sd, "x": _Payload(marker, "exec")}, model("evil-exec.ckpt", "refuse", "objects other than tensors"))
    torch.save({"state_dict": sd, "x": _Payload(marker, "touch")}, model("evil-touch.pt", "refuse", "objects other than tensors"))
    torch.save({"state_dict": sd, "x": _Payload(marker)}, model("evil-legacy.ckpt", "refuse", "objects other than tensors"),
               _use_new_zipfile_serialization=False)
    for proto in (0, 2, 4, 5):
        model(f"evil-raw-protocol{proto}.ckpt", "refuse", "refused|not a checkpoint sdclip can read").write_bytes(pickle.dumps({"x": _Payload(marker)}, protocol=proto))
    for proto in (4, 5):
        model(f"plain-pickle-protocol{proto}.ckpt", "refuse", "plain Python pickle").write_bytes(
            pickle.dumps({"state_dict": {k: v[:2].tolist() for k, v in list(sd.items())[:2]}}, protocol=proto))
    model("pickled-tensors-protocol4.pt", "refuse", "refused").write_bytes(pickle.dumps(sd, protocol=4))

    # -- zips torch never writes
    with zipfile.ZipFile(io.BytesIO(ckpt)) as src, zipfile.ZipFile(model("deflated.ckpt", "refuse", "compress"), "w",
                                                                   zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    with zipfile.ZipFile(model("zip-bomb.ckpt", "refuse", "compress|inflate"), "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data/0", "w") as fh:
            chunk = bytes(1 << 20)
            for _ in range(16):
                fh.write(chunk)
        z.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))

    # -- tensors that are not all there
    huge = dict(sd)
    huge[P + "embeddings.token_embedding.weight"] = torch.zeros(1, 1).expand(1_000_000, 1_000_000)
    torch.save({"state_dict": huge}, model("stride0-huge.ckpt", "refuse", "expanded view"))
    view = dict(sd)
    view[P + "embeddings.position_embedding.weight"] = torch.zeros(1, 1).expand(77, WIDTH)
    torch.save({"state_dict": view}, model("stride0-positions.ckpt", "refuse", "expanded view"))
    meta = dict(sd)
    meta[P + "final_layer_norm.weight"] = torch.empty(WIDTH, device="meta")
    torch.save({"state_dict": meta}, model("meta-tensor.ckpt", "refuse", "meta tensor"))
    sparse = dict(sd)
    sparse[P + "encoder.layers.0.self_attn.q_proj.weight"] = sd[P + "encoder.layers.0.self_attn.q_proj.weight"].to_sparse()
    torch.save({"state_dict": sparse}, model("sparse-tensor.ckpt", "refuse", "sparse"))

    # -- fp8 storage: read and upcast; a NaN bit pattern refused
    if hasattr(torch, "float8_e4m3fn"):
        f8 = {k: v.to(torch.float8_e4m3fn) for k, v in sd.items()}
        save_file(f8, str(model("fp8-e4m3fn.safetensors", "load")))
        torch.save({"state_dict": {k: v.to(torch.float8_e5m2) for k, v in sd.items()}}, model("fp8-e5m2.ckpt", "load"))
        bad = dict(f8)
        t = bad[P + "final_layer_norm.bias"].clone()
        t.view(torch.uint8)[0] = 0x7F  # e4m3fn NaN
        bad[P + "final_layer_norm.bias"] = t
        save_file(bad, str(model("fp8-nan.safetensors", "refuse", "NaN")))

    # -- values: non-finite, too large for the dtype asked for, too large to compute with
    def edited(name: str, expect: str, match: str, key: str, value, **kw) -> None:
        x = dict(sd)
        x[P + key] = value(x[P + key]) if callable(value) else value
        save_file(x, str(model(name, expect, match, **kw)))

    edited("nan-weight.safetensors", "refuse", "NaN", "encoder.layers.1.mlp.fc1.weight", lambda t: t.index_fill(0, torch.tensor([0]), float("nan")))
    edited("inf-weight.safetensors", "refuse", "NaN or infinite", "final_layer_norm.bias", lambda t: t.index_fill(0, torch.tensor([3]), float("inf")))
    edited("1e5-as-fp16.safetensors", "refuse", "float16", "encoder.layers.0.mlp.fc2.weight", lambda t: torch.full_like(t, 1e5), dtype=torch.float16)
    cases.append(Case("1e5-as-fp32.safetensors", "model", m / "1e5-as-fp16.safetensors", "load", note="finite in float32"))
    edited("1e30-weights.safetensors", "refuse", "NaN/inf", "encoder.layers.0.mlp.fc1.weight", lambda t: torch.full_like(t, 1e30))
    edited("1e30-token-table.safetensors", "refuse", "NaN/inf", "embeddings.token_embedding.weight", lambda t: torch.full_like(t, 1e30))
    cases.append(Case("1e30-as-bf16.safetensors", "model", m / "1e30-weights.safetensors", "refuse", "NaN/inf", dtype=torch.bfloat16))
    edited("int-weight.safetensors", "refuse", "floating-point", "final_layer_norm.weight", lambda t: t.to(torch.int32))
    edited("wrong-shape.safetensors", "refuse", "has shape", "encoder.layers.0.self_attn.k_proj.weight", torch.zeros(WIDTH, 3))

    # -- keys: missing, absurd layer numbers, unknown layouts
    def keys(name: str, match: str, edit) -> None:
        x = dict(sd)
        edit(x)
        save_file(x, str(model(name, "refuse", match)))

    keys("no-position-embedding.safetensors", "missing tensor", lambda x: x.pop(P + "embeddings.position_embedding.weight"))
    keys("no-token-embedding.safetensors", "no CLIP text encoder", lambda x: x.pop(P + "embeddings.token_embedding.weight"))
    keys("layer-1e9.safetensors", "names layer 1000000000",
         lambda x: x.__setitem__(P + "encoder.layers.1000000000.mlp.fc1.weight", torch.zeros(1)))
    keys("layer-5000-digits.safetensors", "names layer",
         lambda x: x.__setitem__(P + "encoder.layers." + "9" * 5000 + ".mlp.fc1.weight", torch.zeros(1)))
    keys("missing-layer.safetensors", r"layers \[0\] missing", lambda x: [x.pop(k) for k in list(x) if ".layers.0." in k])
    keys("unknown-layout.safetensors", "no CLIP text encoder", lambda x: [x.pop(k) for k in list(x)] and x.update(
        {"model.diffusion_model.out.0.weight": torch.zeros(2)}))
    keys("extra-tensor.safetensors", "unexpected tensor", lambda x: x.__setitem__(P + "encoder.layers.0.extra.weight", torch.zeros(2)))

    # -- shard indexes
    (m / "shards").mkdir()
    (m / "shards" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": [1, 2]}))
    cases.append(Case("shard-index-list", "model", m / "shards" / "model.safetensors.index.json", "refuse", "weight_map"))
    (m / "shards2").mkdir()
    (m / "shards2" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    cases.append(Case("shard-index-escape", "model", m / "shards2" / "model.safetensors.index.json", "refuse", "not a file name"))

    # -- HF model folders with broken config.json / tokenizer files
    def folder(name: str, match: str, expect: str = "refuse", **kw) -> Path:
        path = _hf_folder(m / name, **kw)
        cases.append(Case(name, "model", path, expect, match))
        return path

    folder("hf-good", "", "load")
    folder("config-json-list", "must be a JSON object", config=lambda c: [1, 2])
    folder("config-heads-string", "num_attention_heads", config=lambda c: {**c, "num_attention_heads": "two"})
    folder("config-hidden-size-float", "hidden_size", config=lambda c: {**c, "hidden_size": 64.5})
    folder("config-eps-negative", "layer_norm_eps", config=lambda c: {**c, "layer_norm_eps": -10})
    folder("config-eps-nan", "layer_norm_eps", config=lambda c: {**c, "layer_norm_eps": math.nan})
    folder("config-eps-zero", "layer_norm_eps", config=lambda c: {**c, "layer_norm_eps": 0})
    folder("config-eps-string", "layer_norm_eps", config=lambda c: {**c, "layer_norm_eps": "1e-5"})
    folder("config-act-list", "hidden_act", config=lambda c: {**c, "hidden_act": ["gelu"]})
    folder("config-text-config-list", "text_config", config=lambda c: {"text_config": [1]})
    folder("config-not-utf8", "unreadable config", config_bytes=b'{"hidden_act": "\xff\xfe"}')
    folder("config-deep", "unreadable config", config_bytes=b"[" * 100_000 + b"]" * 100_000)
    folder("config-hidden-size-disagrees", "disagrees", config=lambda c: {**c, "hidden_size": 128})
    p = folder("tokenizer-config-not-utf8", "UTF-8")
    (p / "tokenizer_config.json").write_bytes(b'{"model_max_length": 77, "x": "\xff\xfe\xfd"}')
    p = folder("missing-merges", "merges.txt")
    (p / "merges.txt").unlink()
    p = folder("vocab-json-list", "vocab.json")
    (p / "vocab.json").write_text("[1, 2, 3]")
    p = folder("config-missing-weights", "no weights")
    (p / "model.safetensors").unlink()

    # -- model files that are not regular files or nest without end (issue 24, 7b); they hung or aborted once
    p = folder("config-fifo", "not a regular file \\(a FIFO")
    (p / "config.json").unlink()
    os.mkfifo(p / "config.json")
    cases[-1].isolate = True
    p = folder("config-dev-zero", "not a regular file \\(a character device")
    (p / "config.json").unlink()
    os.symlink("/dev/zero", p / "config.json")
    cases[-1].isolate = True
    os.mkfifo(model("fifo.safetensors", "refuse", "not a regular file \\(a FIFO", isolate=True))
    p = folder("model-index-deep", "nested deeper than 64 levels")
    (p / "model_index.json").write_bytes(b"{\"a\":" * 50_000 + b"1" + b"}" * 50_000)
    p = folder("unet-folder", "holds a UNet2DConditionModel, not a text encoder")
    (p / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.30.0",
                                               "cross_attention_dim": WIDTH}))
    (p / "model.safetensors").rename(p / "diffusion_pytorch_model.safetensors")

    # -- embeddings
    def emb(name: str, expect: str, match: str = "", word: str = "", **kw) -> Path:
        path = e / name
        cases.append(Case(name, "embedding", path, expect, match, prompt_word=word or Path(name).stem, **kw))
        return path

    vec = torch.randn(2, WIDTH, generator=rng) * 0.3
    _a1111(emb("good-a1111.pt", "load"), vec)
    save_file({"emb_params": vec}, str(emb("good-kohya.safetensors", "load")))
    torch.save({"<tok>": vec[0]}, emb("good-diffusers.bin", "load"))
    if hasattr(torch, "float8_e4m3fn"):
        save_file({"emb_params": vec.to(torch.float8_e4m3fn)}, str(emb("fp8-emb.safetensors", "load")))
        _a1111(emb("fp8-emb.pt", "load"), vec.to(torch.float8_e5m2))
    _a1111(emb("meta-emb.pt", "refuse", "meta tensor"), torch.empty(2, WIDTH, device="meta"))
    _a1111(emb("sparse-emb.pt", "refuse", "sparse"), vec.to_sparse())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        _a1111(emb("sparse-csr-emb.pt", "refuse", "sparse"), vec.to_sparse_csr())
    _a1111(emb("stride0-emb.pt", "refuse", "expanded view|not a textual inversion"), torch.zeros(1, 1).expand(1_000_000, 1_000_000))
    _a1111(emb("stride0-small-emb.pt", "refuse", "expanded view"), torch.zeros(1, 1).expand(2, WIDTH))
    torch.save({"string_to_param": {"*": vec}, "x": _Payload(marker)}, emb("evil-emb.pt", "refuse", "objects other than tensors"))
    emb("evil-raw-emb.pt", "refuse", "refused").write_bytes(pickle.dumps({"x": _Payload(marker, "exec")}, protocol=5))
    torch.save({"string_to_param": {"*": vec}, "x": _Payload(marker)}, emb("evil-legacy-emb.bin", "refuse", "objects other than tensors"),
               _use_new_zipfile_serialization=False)
    emb("random-emb.pt", "refuse", "not a checkpoint sdclip can read").write_bytes(noise)
    emb("random-emb.safetensors", "refuse", "safetensors").write_bytes(noise)
    emb("empty-emb.pt", "refuse", "empty").write_bytes(b"")
    good_emb = (e / "good-a1111.pt").read_bytes()
    emb("truncated-emb.pt", "refuse", "not a checkpoint sdclip can read").write_bytes(good_emb[: len(good_emb) // 2])
    _a1111(emb("nan-emb.pt", "refuse", "NaN"), torch.full((1, WIDTH), math.nan))
    save_file({"emb_params": torch.full((1, WIDTH), math.inf)}, str(emb("inf-emb.safetensors", "refuse", "NaN")))
    _a1111(emb("int-emb.pt", "refuse", "floating point"), torch.ones(1, WIDTH, dtype=torch.int32))
    _a1111(emb("1e30-emb.pt", "refuse", "NaN/inf"), torch.full((1, WIDTH), 1e30))
    _a1111(emb("wrong-width-emb.pt", "refuse", "wide"), torch.randn(1, WIDTH + 1))
    _safetensors_raw(emb("huge-shape-emb.safetensors", "refuse", "safetensors"),
                     {"emb_params": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 64]}}, bytes(64))
    for name in ("ſ", "µ-style", "İstanbul", "ß", "ﬁx"):
        _a1111(emb(f"{name}.pt", "load", word=name), vec)
    _a1111(emb("cat.pt", "load", warn="ordinary word"), vec)

    # -- embedding folders
    def edir(name: str, expect: str, match: str = "", **kw) -> Path:
        path = d / name
        path.mkdir()
        cases.append(Case(name, "embedding_dir", path, expect, match, **kw))
        return path

    p = edir("case-collision", "refuse", r"Style\.pt.*style\.pt|style\.pt.*Style\.pt")
    _a1111(p / "Style.pt", vec)
    _a1111(p / "style.pt", vec)
    p = edir("same-stem", "refuse", r"style\.pt.*style\.safetensors|style\.safetensors.*style\.pt")
    _a1111(p / "style.pt", vec)
    save_file({"emb_params": vec}, str(p / "style.safetensors"))
    p = edir("dir-link-loop", "load")
    _a1111(p / "mystyle.pt", vec)
    (p / "sub").mkdir()
    os.symlink("..", p / "sub" / "up")
    os.symlink(".", p / "self")
    p = edir("file-link-loop", "refuse", "link loop")
    _a1111(p / "mystyle.pt", vec)
    os.symlink("loop.pt", p / "loop.pt")
    p = edir("dangling-link", "refuse", "dangling")
    os.symlink("nowhere.pt", p / "gone.pt")
    p = edir("ordinary-word", "load", warn="ordinary word")
    _a1111(p / "cat.pt", vec)

    # -- a tokenizer folder whose added token sits where textual-inversion vectors go
    p = _hf_folder(root / "tokenizer-collision")
    cfg = json.loads((p / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {"49408": {"content": "<baked>", "special": False}}
    (p / "tokenizer_config.json").write_text(json.dumps(cfg))
    (p / "added_tokens.json").write_text(json.dumps({"<baked>": 49408}))
    _a1111(root / "mystyle.pt", vec)
    cases.append(Case("tokenizer-collision", "tokenizer", p, "refuse", "past the text encoder", prompt_word="<baked>"))
    return cases


# ---- running ---------------------------------------------------------------------------------------

def is_documented(err: BaseException) -> bool:
    """A documented error: a ValueError subclass that is none of the raw ones (and not a bare ValueError)."""
    raw = (KeyError, UnicodeDecodeError, AttributeError, NotImplementedError, MemoryError, IndexError, TypeError)
    return isinstance(err, ValueError) and type(err) is not ValueError and not isinstance(err, raw)


def _message_problems(err: BaseException) -> list[str]:
    text = str(err)
    out = []
    if not is_documented(err):
        out.append(f"undocumented {type(err).__name__}")
    if "\n" in text.strip():
        out.append("message spans several lines")
    for bad in FORBIDDEN:
        if bad.lower() in text.lower():
            out.append(f"message passes on {bad!r}")
    if "may run code" in text or "could run code" in text and "not a checkpoint" in text:
        out.append("random bytes described as code")
    return out


def _finite(pair) -> bool:
    tensors = [pair.positive.embeds, pair.negative.embeds, pair.positive.pooled, pair.negative.pooled]
    return all(t is None or bool(torch.isfinite(t).all()) for t in tensors)


def _good_model(case: Case) -> Path:
    return case.path.parents[1] / "models" / "good.safetensors"


def entry_points(case: Case) -> dict[str, callable]:
    """name → a call that reads the case's file the way that entry point does (and encodes, where it can)."""
    from sdclip.conditioner import Conditioner
    from sdclip.encoder import load_text_encoders, open_tensor_file
    from sdclip.encoder.textual_inversion import EmbeddingLibrary, load_embedding

    calls: dict[str, callable] = {}
    if case.kind == "model":
        if case.path.is_file():
            calls["open_tensor_file"] = lambda: open_tensor_file(case.path).keys()
        calls["load_text_encoders"] = lambda: load_text_encoders(case.path, dtype=case.dtype)
        for preset in PRESETS:
            calls[f"Conditioner[{preset}]"] = lambda preset=preset: Conditioner.from_pretrained(
                case.path, preset, dtype=case.dtype)("a photo of a cat", negative="blurry")
    elif case.kind == "embedding":
        lib_dir = case.path.parent / f".{case.path.name}.dir"

        def in_folder():
            if not lib_dir.exists():
                lib_dir.mkdir()
                shutil.copy(case.path, lib_dir / case.path.name)
            return EmbeddingLibrary().load_dir(lib_dir)

        calls["load_embedding"] = lambda: load_embedding(case.path)
        calls["EmbeddingLibrary.load_dir"] = in_folder
        for preset in PRESETS:
            word = f"embedding:{case.prompt_word}" if preset == "comfy" else case.prompt_word
            calls[f"Conditioner[{preset}]"] = lambda preset=preset, word=word: Conditioner.from_pretrained(
                _good_model(case), preset, embeddings=[case.path])(f"a photo of {word}, {word.upper()}", negative=word)
    elif case.kind == "embedding_dir":
        calls["EmbeddingLibrary.load_dir"] = lambda: EmbeddingLibrary().load_dir(case.path)
        calls["EmbeddingLibrary.load_dir(strict=False)"] = lambda: EmbeddingLibrary().load_dir(case.path, strict=False)
        for preset in PRESETS:
            calls[f"Conditioner[{preset}]"] = lambda preset=preset: Conditioner.from_pretrained(
                _good_model(case), preset, embeddings=[case.path])("a photo of a cat, mystyle")
    elif case.kind == "tokenizer":
        for preset in PRESETS:
            calls[f"Conditioner[{preset}]"] = lambda preset=preset: Conditioner.from_pretrained(
                case.path, preset, embeddings=[case.path.parent / "mystyle.pt"])(f"a {case.prompt_word} photo, mystyle")
    return calls


#: entry points that only read (a lenient folder walk may skip what the strict one refuses)
LENIENT = ("EmbeddingLibrary.load_dir(strict=False)", "open_tensor_file", "load_embedding")


#: seconds and bytes an isolated case may take (a regression that hangs or allocates without end fails here)
ISOLATE_TIMEOUT, ISOLATE_MEMORY = 120, 4 << 30


def run_case(case: Case, root: Path) -> Outcome:
    """Every entry point on one case; `problems` lists every broken rule. Isolated cases run in a subprocess."""
    return run_cases([case], root)[0]


def run_cases(cases: list[Case], root: Path) -> list[Outcome]:
    """run_case for many: the isolated ones together in one subprocess (one interpreter start), in order."""
    isolated = [c for c in cases if c.isolate]
    done = dict(zip((c.name for c in isolated), _run_isolated(isolated, root))) if isolated else {}
    return [done[c.name] if c.isolate else _run_in_process(c, root) for c in cases]


def _run_isolated(cases: list[Case], root: Path) -> list[Outcome]:
    """Cases in a fresh interpreter with a timeout and an address-space cap: a hang or an abort (a Rust
    panic, a huge allocation) becomes a problem of these cases instead of ending the run."""
    import subprocess
    import sys

    specs = [{**c.__dict__, "path": str(c.path), "dtype": str(c.dtype).removeprefix("torch."), "isolate": False}
             for c in cases]
    code = ("import json, resource, sys, torch\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({ISOLATE_MEMORY}, {ISOLATE_MEMORY}))\n"
            "import hostile_corpus as hc\n"
            "for spec in json.loads(sys.argv[1]):\n"
            "    spec.update(path=hc.Path(spec['path']), dtype=getattr(torch, spec['dtype']))\n"
            "    out = hc.run_case(hc.Case(**spec), hc.Path(sys.argv[2]))\n"
            "    print(json.dumps({'results': out.results, 'problems': out.problems}), flush=True)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "RUST_BACKTRACE": "0"}
    outs = [Outcome(c) for c in cases]
    try:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(specs), str(root)], capture_output=True,
                              text=True, timeout=ISOLATE_TIMEOUT, env=env)
        lines, failure = proc.stdout.splitlines(), (
            f"aborted (exit {proc.returncode}): {proc.stderr.strip()[-300:]}" if proc.returncode else "")
    except subprocess.TimeoutExpired as e:
        lines = (e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or "").splitlines()
        failure = f"hung: no answer in {ISOLATE_TIMEOUT} s"
    for i, out in enumerate(outs):
        if i < len(lines):
            got = json.loads(lines[i])
            out.results, out.problems = got["results"], got["problems"]
        else:
            out.problems.append(failure or "no answer")
        out.executed = marker_of(root).exists()
        if out.executed and "a pickle payload ran" not in out.problems:
            out.problems.append("a pickle payload ran")
    return outs


def _run_in_process(case: Case, root: Path) -> Outcome:
    from sdclip.conditioner import ConditioningPair

    out = Outcome(case)
    refusals = []
    for name, call in entry_points(case).items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = call()
            except Exception as err:  # noqa: BLE001 - the point is to see every kind
                out.results[name] = f"refused: {err}" if is_documented(err) else f"CRASH {type(err).__name__}: {err}"
                out.problems += [f"{name}: {p}" for p in _message_problems(err)]
                refusals.append((name, err))
                continue
        if isinstance(result, ConditioningPair) and not _finite(result):
            out.problems.append(f"{name}: non-finite conditioning handed out")
        out.results[name] = "ok"
        if case.warn and name.startswith(("Conditioner", "EmbeddingLibrary")):
            import re

            if not any(re.search(case.warn, str(w.message)) for w in caught):
                out.problems.append(f"{name}: no warning matching {case.warn!r}")
    end_to_end = [(n, e) for n, e in refusals if n.startswith("Conditioner")]
    if case.expect == "load" and refusals:
        out.problems.append(f"expected to load; refused by {[n for n, _ in refusals]}: {str(refusals[0][1])[:200]}")
    if case.expect == "refuse":
        import re

        if not end_to_end:
            out.problems.append("expected a refusal; the Conditioner accepted it")
        for n, err in end_to_end:
            if case.match and not re.search(case.match, str(err)):
                out.problems.append(f"{n}: message {str(err)[:200]!r} does not match {case.match!r}")
    out.executed = marker_of(root).exists()
    if out.executed:
        out.problems.append("a pickle payload ran")
    return out
