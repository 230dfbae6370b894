"""Issue 24 (0c, 7b) and issue 19 (14): loader inputs that ended in tracebacks, aborts, hangs or silent
zeros, each now one line in bounded time and memory; non-finite encodings refused by the encoders
themselves; wrong folders and unreachable hub ids said in one line with what to do.

Cases that could abort the interpreter (a Rust panic, a multi-GB allocation) or block it (a FIFO) run in a
subprocess with a timeout and a memory limit, so a regression fails the test instead of the suite.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sdclip.bounded_files import json_depth, read_bytes, read_json
from sdclip.conditioner import Conditioner
from sdclip.encoder import load_text_encoders
from sdclip.encoder.finite import NonFiniteError, dtype_advice
from sdclip.encoder.loading.checkpoint import CheckpointError
from sdclip.tokenizer.t5 import T5Tokenizer, T5TokenizerError
from tiny_pipelines import sd1_pipeline, sd3_pipeline, t5_tokenizer_dir

DEEP = b"[" * 100_000 + b"]" * 100_000


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text.strip() and "Traceback" not in text, text
    return text


def _isolated(code: str, timeout: float = 120, memory_gb: int = 6) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with a timeout and an address-space cap (an abort or a hang fails
    the test, not the suite)."""
    prelude = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({memory_gb << 30}, {memory_gb << 30}))\n"
    env = {**os.environ, "RUST_BACKTRACE": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sd3") / "sd3"
    sd3_pipeline(seed=11).save_pretrained(str(root))
    return root


@pytest.fixture(scope="module")
def sd1_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sd1") / "sd1"
    sd1_pipeline(seed=4).save_pretrained(str(root))
    return root


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


# ---- 24.0c: never a silent wrong tensor ------------------------------------------------------------

def test_sd3_text_encoder_3_with_weights_but_no_config_is_refused(sd3_dir, tmp_path):
    """Was: T5 silently zeros, exit 0. The config (activation, max distance) is not in the weights."""
    folder = _copy(sd3_dir, tmp_path / "sd3")
    (folder / "text_encoder_3" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"text_encoder_3: weights \(model.safetensors\) but no config.json") as err:
        Conditioner.from_pretrained(folder, "diffusers")
    assert "remove the folder to run SD3 without T5" in _one_line(err.value)


def test_sd3_model_index_naming_a_missing_t5_is_refused_and_null_means_zeros(sd3_dir, tmp_path):
    folder = _copy(sd3_dir, tmp_path / "sd3")
    shutil.rmtree(folder / "text_encoder_3")
    with pytest.raises(CheckpointError, match=r"names text_encoder_3 \(T5EncoderModel\) but the folder is missing"):
        Conditioner.from_pretrained(folder, "diffusers")
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder_3"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    cond = Conditioner.from_pretrained(folder, "diffusers")
    assert cond.encoders[2] is None  # diffusers' zeros, as the folder now says


def test_t5_runner_refuses_non_finite_output_naming_block_and_dtype(sd3_dir):
    """The check lives in the encoder: the Python API raises what `sdclip encode` refuses."""
    cond = Conditioner.from_pretrained(sd3_dir, "diffusers")
    t5 = cond.encoders[2]
    cond("a red fox")  # finite before
    with torch.no_grad():
        t5.blocks[1].wo.weight.fill_(3e38)
    with pytest.raises(NonFiniteError, match=r"T5 \(2 blocks × 384\): the encoding turns NaN/inf at block 1 "
                                             r"\(0-based\) in float32; the values are too large even in float32") as err:
        cond("a blue fox")
    text = _one_line(err.value)
    assert "try float32" not in text  # never the dtype already in use
    assert isinstance(err.value, CheckpointError)  # callers that caught CheckpointError still do


def test_pipeline_kwargs_refuse_non_finite_t5_too():
    from sdclip.pipelines import pipeline_kwargs

    pipe = sd3_pipeline(seed=12)
    with torch.no_grad():
        pipe.text_encoder_3.encoder.block[0].layer[1].DenseReluDense.wo.weight.fill_(3e38)
    with pytest.raises(NonFiniteError, match=r"NaN/inf at block 0 \(0-based\) in float32"):
        pipeline_kwargs(pipe, "a red fox")


def test_clip_runner_raises_the_same_error(sd1_dir):
    cond = Conditioner.from_pretrained(sd1_dir, "diffusers")
    with torch.no_grad():
        cond.encoders[0].blocks[0].mlp.fc.weight.fill_(1e30)
    with pytest.raises(NonFiniteError, match=r"NaN/inf at block layers\.[01] \(0-based\) in float32; the values are too large"):
        cond("a photo of a cat")


@pytest.mark.parametrize("dtype, names", [(torch.float16, ("bfloat16", "float32")), (torch.bfloat16, ("float32",)),
                                          (torch.float32, ())])
def test_dtype_advice_never_names_the_dtype_in_use(dtype, names):
    own = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    for cli in (False, True):
        text = dtype_advice(dtype, cli=cli)
        assert f"try {str(dtype).removeprefix('torch.')}" not in text and f"--dtype {own}" not in text
        short = {"bfloat16": "bf16", "float32": "fp32"}
        for n in names:
            assert (f"--dtype {short[n]}" if cli else n) in text


def test_t5_values_past_float16_are_refused_after_the_cast(sd3_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from sdclip.encoder.loading.t5 import load_t5

    folder = _copy(sd3_dir / "text_encoder_3", tmp_path / "t5")
    sd = load_file(str(folder / "model.safetensors"))
    key = "encoder.block.0.layer.0.SelfAttention.q.weight"
    sd[key] = torch.full_like(sd[key], 1e5)
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"SelfAttention\.q\.weight.*too large for float16.*bfloat16"):
        load_t5(folder, dtype=torch.float16)
    load_t5(folder, dtype=torch.float32)  # finite in float32


# ---- 24.7b: hostile loader inputs, one line each --------------------------------------------------

def test_t5_feed_forward_proj_not_a_string(sd3_dir, tmp_path):
    folder = _copy(sd3_dir, tmp_path / "sd3")
    cfg = folder / "text_encoder_3" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "feed_forward_proj": 5}))
    with pytest.raises(CheckpointError, match="feed_forward_proj must be a string") as err:  # was AttributeError
        Conditioner.from_pretrained(folder, "diffusers")
    _one_line(err.value)


@pytest.mark.parametrize("where", ["model_index.json", "text_encoder/config.json", "text_encoder_3/config.json",
                                   "tokenizer_3/tokenizer.json", "tokenizer/tokenizer.json",
                                   "text_encoder_3/model.safetensors.index.json"])
def test_json_nested_100000_deep_is_one_line(sd3_dir, tmp_path, where):
    folder = _copy(sd3_dir, tmp_path / "sd3")
    (folder / where).write_bytes(DEEP)
    if where.endswith("index.json"):
        (folder / "text_encoder_3" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="nested deeper than 64 levels") as err:  # was RecursionError
        Conditioner.from_pretrained(folder, "diffusers")
    assert where.split("/")[-1] in _one_line(err.value)


def _charsmap_doc(kind: str) -> str:
    doc = json.loads((t5_tokenizer_dir() / "tokenizer.json").read_text())
    blob = base64.b64decode(doc["normalizer"]["precompiled_charsmap"])
    size = int.from_bytes(blob[:4], "little")
    bad = {
        "not-base64": "this is not base64 !!!",
        "random": base64.b64encode(bytes(range(256)) * 16).decode(),  # trie size 0x03020100: past the blob
        "trie-past-blob": base64.b64encode((len(blob) * 4).to_bytes(4, "little") + blob[4:]).decode(),
        "trie-out-of-bounds": base64.b64encode(blob[:4] + b"\xff" * size + blob[4 + size:]).decode(),
        "replacement-mid-character": None,
    }[kind]
    if kind == "replacement-mid-character":  # a leaf whose value points inside a multi-byte character
        units = bytearray(blob[4: 4 + size])
        tail = blob[4 + size:]
        mid = next(i for i, b in enumerate(tail) if 0x80 <= b < 0xC0)
        for i in range(0, len(units), 4):
            u = int.from_bytes(units[i: i + 4], "little")
            if u >> 31:
                units[i: i + 4] = ((1 << 31) | mid).to_bytes(4, "little")
        bad = base64.b64encode(blob[:4] + bytes(units) + tail).decode()
    doc["normalizer"]["precompiled_charsmap"] = bad
    return json.dumps(doc)


CHARSMAPS = ("not-base64", "random", "trie-past-blob", "trie-out-of-bounds", "replacement-mid-character")


def test_bad_t5_charsmaps_are_refused_before_tokenizers_sees_them(tmp_path):
    """Was: a Rust panic (not base64, a trie walking out of bounds) or a multi-GB allocation abort (random
    bytes). Each case in a subprocess: an abort would fail the test, not end the suite."""
    for kind in CHARSMAPS:
        d = tmp_path / kind
        d.mkdir()
        (d / "tokenizer.json").write_text(_charsmap_doc(kind))
    proc = _isolated(f"""
        from pathlib import Path
        from sdclip.tokenizer.t5 import T5Tokenizer, T5TokenizerError
        for kind in {CHARSMAPS!r}:
            for pipeline in ("transformers", "file"):
                try:
                    T5Tokenizer.from_folder(Path({str(tmp_path)!r}) / kind, pipeline).encode("héllo wörld ｆｕｌｌ")
                    print(kind, "LOADED")
                except T5TokenizerError as e:
                    print(kind, "REFUSED", e)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "panicked" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 * len(CHARSMAPS), proc.stdout
    assert all(" REFUSED " in line for line in lines), proc.stdout
    assert "not base64" in lines[0] and "corrupt SentencePiece normalisation table" in lines[2]


def test_good_charsmap_still_loads():
    tok = T5Tokenizer.from_folder(t5_tokenizer_dir())
    assert tok.encode("a red fox")


@pytest.mark.slow
def test_fifo_and_dev_zero_where_model_files_go(sd1_dir, sd3_dir, tmp_path):
    """Was: a FIFO named config.json blocked forever; config.json linked to /dev/zero ended in MemoryError.
    Every model JSON goes through one bounded reader: regular files only."""
    cases = []
    for name, rel in (("sd1", "text_encoder/config.json"), ("sd1", "model_index.json"), ("sd1", "tokenizer/tokenizer.json"),
                      ("sd3", "text_encoder_3/config.json"), ("sd3", "tokenizer_3/tokenizer.json"),
                      ("sd3", "model_index.json")):
        for kind in ("fifo", "devzero"):
            folder = _copy(sd1_dir if name == "sd1" else sd3_dir, tmp_path / f"{name}-{rel.replace('/', '-')}-{kind}")
            target = folder / rel
            target.unlink()
            os.mkfifo(target) if kind == "fifo" else os.symlink("/dev/zero", target)
            cases.append(str(folder))
    spiece = tmp_path / "spiece"
    spiece.mkdir()
    os.symlink("/dev/zero", spiece / "spiece.model")
    os.mkfifo(tmp_path / "style.pt")
    os.symlink("/dev/zero", tmp_path / "zero.safetensors")
    proc = _isolated(f"""
        from sdclip.conditioner import Conditioner
        from sdclip.encoder.textual_inversion import load_embedding
        from sdclip.tokenizer.t5 import T5Tokenizer
        for folder in {cases!r}:
            try:
                Conditioner.from_pretrained(folder, "diffusers")
                print("LOADED", folder)
            except ValueError as e:
                print("REFUSED", type(e).__name__, e)
        for call, arg in ((T5Tokenizer.from_folder, {str(spiece)!r}), (load_embedding, {str(tmp_path / "style.pt")!r}),
                          (load_embedding, {str(tmp_path / "zero.safetensors")!r})):
            try:
                call(arg)
                print("LOADED", arg)
            except ValueError as e:
                print("REFUSED", type(e).__name__, e)
    """, timeout=240, memory_gb=4)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(cases) + 3 and all(line.startswith("REFUSED") for line in lines), proc.stdout
    assert "a FIFO" in lines[-2] and "a character device" in lines[-1]
    lines = lines[:-2]
    # the CLIP tokenizer folder looks for regular files and says which it lacks; every other file is named by kind
    named = [line for line, folder in zip(lines, cases) if "sd1-tokenizer" not in folder]
    assert all(("a FIFO (named pipe)" if folder.endswith("fifo") else "a character device") in line
               for line, folder in zip(lines, cases) if "sd1-tokenizer" not in folder), named
    assert "a character device" in lines[-1]


def test_bounded_reader(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b"[" + b"1," * 600_000 + b"1]")
    with pytest.raises(ValueError, match="larger than 1 MB"):
        read_bytes(big, 1 << 20, ValueError)
    assert len(read_json(big, ValueError, limit=2 << 20)) == 600_001
    assert json_depth(b'{"a": ["[[[[", {"b": "\\"]"}]}') == 3
    assert json_depth(DEEP) == 65 and json_depth(b"[[[") == 65  # capped; unbalanced counts as too deep
    with pytest.raises(ValueError, match="not a regular file \\(a folder\\)"):
        read_json(tmp_path, ValueError)
    with pytest.raises(ValueError, match="is missing"):
        read_json(tmp_path / "nope.json", ValueError)


# ---- 19.14: wrong folders, unreachable hub ids ------------------------------------------------------

@pytest.mark.parametrize("sub, says", [("unet", "holds a UNet2DConditionModel, not a text encoder"),
                                       ("vae", "holds a AutoencoderKL, not a text encoder"),
                                       ("tokenizer", "holds a tokenizer, not a text encoder"),
                                       ("scheduler", "holds a scheduler, not a text encoder")])
def test_a_pipeline_component_names_itself_and_the_folder_to_pass(sd1_dir, sub, says):
    with pytest.raises(CheckpointError) as err:  # was "config.json but no weights" for the UNet
        load_text_encoders(sd1_dir / sub)
    assert _one_line(err.value) == f"{sd1_dir / sub} {says}: pass {sd1_dir}"


def test_a_lone_t5_folder_names_the_pipeline(sd3_dir):
    with pytest.raises(CheckpointError, match=rf"holds a T5 encoder alone .* pass {sd3_dir}$"):
        load_text_encoders(sd3_dir / "text_encoder_3")


def test_cli_on_the_unet_folder_is_one_line(sd1_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sdclip", "encode", "--model", str(sd1_dir / "unet"), "--prompt",
                           "a cat", "--out", str(tmp_path / "out.safetensors")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "UNet2DConditionModel, not a text encoder" in proc.stderr


def test_unreachable_hub_is_one_line_without_retry_chatter(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "cache")}
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run([sys.executable, "-c", "from sdclip.encoder import load_text_encoders\n"
                           "try:\n    load_text_encoders('someone/tiny-model')\nexcept ValueError as e:\n    print(e)"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    out = proc.stdout.strip()
    assert "\n" not in out and "the hub cannot be reached" in out and str(tmp_path / "cache") in out
    assert "HF_HUB_OFFLINE=1" in out and "local path" in out
