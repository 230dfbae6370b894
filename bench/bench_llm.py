"""The LLM families (Qwen-Image, Z-Image, Lumina 2): sdclip against diffusers' own `encode_prompt`, side by side
in one run, and the loading peak.

Real widths, few layers, random weights, saved as diffusers folders: Qwen2.5-VL-7B's text model (3584 wide,
28 heads of 128, 4 KV heads, MLP 18944; a one-block vision tower, never loaded by sdclip), Qwen3-4B (2560,
32 × 128, 8 KV, MLP 9728), Gemma-2-2B (2304, 8 × 256, 4 KV, MLP 9216). The vocabulary is the tests' tiny BPE
one (a lookup: its size changes load bytes, not encode time). Every block costs the same, so a full model's
time ≈ per-block time × depth; Z-Image and Lumina 2 read `hidden_states[-2]`, so sdclip runs one block fewer
than diffusers (which computes every layer's states): with `--layers 2` that is half.

- cold: load the folder (sdclip `Conditioner.from_pretrained`; diffusers: transformers `from_pretrained` of
  the text encoder and tokenizer, the pipeline around them) and encode once.
- encode: the model loaded, captions + negatives encoded (sdclip's row cache emptied first).
- warm: sdclip's same call again (rows from its cache).
- peak ÷ bytes: a fresh process's peak resident-memory rise while loading and then touching every weight,
  over the text encoder's file bytes (sdclip: meta device + assign, only the blocks read, each tensor read
  into its own memory; transformers: its own from_pretrained, pages of a mapped file resident once touched;
  a parameter's float copy while touching it is one tensor at a time).

Same tensors: max abs difference of prompt_embeds and negative_prompt_embeds on diffusers' positions.

    python bench/bench_llm.py [--layers 2] [--dtypes fp32,bf16] [--repeats 2] [--loading-only]

--loading-only measures the loading peak alone and updates only the peak figures of results/llm.json's
matching rows (the timings there are kept).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import REPO, best_of, dtype_of, machine, md_table, setup, write_json

CAPTIONS = ["a red fox sitting in the snow at dawn, soft light", "a wooden boat on a calm lake, misty mountains"]
NEGATIVES = ["blurry, lowres", "low quality, jpeg artifacts"]
FAMILIES = ("qwen-image", "z-image", "lumina2")
WIDTHS = {
    "qwen-image": dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4),
    "z-image": dict(hidden_size=2560, intermediate_size=9728, num_attention_heads=32, num_key_value_heads=8, head_dim=128),
    "lumina2": dict(hidden_size=2304, intermediate_size=9216, num_attention_heads=8, num_key_value_heads=4, head_dim=256),
}


def build(root: Path, family: str, layers: int, dtype: torch.dtype) -> Path:
    """A diffusers folder of `family` with a real-width, `layers`-deep random text encoder in `dtype`."""
    import transformers as T

    from tiny_llm import ENCODERS, PIPELINES, tiny_tokenizer

    tok = tiny_tokenizer(family)
    text = dict(vocab_size=len(tok), num_hidden_layers=layers, max_position_embeddings=4096, **WIDTHS[family])
    torch.manual_seed(0)
    if family == "qwen-image":
        text["rope_parameters"] = {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6}
        model = T.Qwen2_5_VLForConditionalGeneration(T.Qwen2_5_VLConfig(text_config=text, vision_config=dict(
            depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=3584, fullatt_block_indexes=[0])))
    elif family == "z-image":
        model = T.Qwen3Model(T.Qwen3Config(**text))
    else:
        model = T.Gemma2Model(T.Gemma2Config(pad_token_id=0, **text))
    folder = root / f"{family}-{str(dtype).split('.')[-1]}"
    model.to(dtype).save_pretrained(folder / "text_encoder")
    tok.save_pretrained(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": PIPELINES[family], "text_encoder": ["transformers", ENCODERS[family]],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"]}))
    del model
    return folder


def diffusers_pipe(folder: Path, family: str, dtype: torch.dtype):  # noqa: ANN201
    import diffusers
    import transformers as T

    from tiny_llm import ENCODERS, PIPELINES

    tok = T.AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    model = getattr(T, ENCODERS[family]).from_pretrained(str(folder / "text_encoder"), dtype=dtype).eval()
    return getattr(diffusers, PIPELINES[family])(scheduler=None, vae=None, text_encoder=model, tokenizer=tok, transformer=None)


def run_diffusers(pipe, family: str) -> tuple[object, object]:  # noqa: ANN001
    if family == "qwen-image":
        return pipe.encode_prompt(CAPTIONS, device="cpu")[0], pipe.encode_prompt(NEGATIVES, device="cpu")[0]
    if family == "z-image":
        return pipe.encode_prompt(list(CAPTIONS), device="cpu", negative_prompt=list(NEGATIVES))
    out = pipe.encode_prompt(CAPTIONS, negative_prompt=NEGATIVES, device="cpu")
    return out[0], out[2]


def difference(ours: dict, theirs: tuple) -> float:
    worst = 0.0
    for key, t in zip(("prompt_embeds", "negative_prompt_embeds"), theirs):
        o = ours[key]
        pairs = zip(o, t) if isinstance(t, list) else [(o[:, : t.shape[1]], t)]
        worst = max(worst, *(float((a.float() - b.float()).abs().max()) for a, b in pairs))
    return worst


PEAK = r"""
import sys, json, torch, transformers, diffusers
import sdclip.conditioner, sdclip.encoder.loading.llm
def status(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field + ":"))
sys.path.insert(0, {tests!r})
from tiny_llm import ENCODERS
from sdclip.conventions.family import get_family
for name in (ENCODERS[{family!r}], get_family({family!r}).roles[0].llm.model_class):  # transformers imports a
    getattr(transformers, name)  # model's code lazily, at first use: imported here, so the peak is the loading's
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts here: a forked child inherits its parent's
before = status("VmRSS")
if {which!r} == "sdclip":
    c = sdclip.conditioner.Conditioner.from_pretrained({folder!r}, preset="diffusers")
    params = [p for e in c.encoders for p in e.parameters()]
else:
    m = getattr(transformers, ENCODERS[{family!r}]).from_pretrained({folder!r} + "/text_encoder", dtype="auto")
    params = list(m.parameters())
load = status("VmHWM") - before
for p in params:  # every weight resident (a mapped file's pages count once touched)
    float(p.sum())
print(json.dumps({{"load": load, "touched": status("VmHWM") - before}}))
"""


def loading_peak(folder: Path, family: str, which: str) -> float:
    """Peak RSS rise while loading and touching every weight, ÷ the text encoder's file bytes; a fresh process
    each, its peak reset after the imports, the model classes' lazily imported code included (a mapped file's pages count only once touched, so a lazy load's
    peak shows after the touch)."""
    code = PEAK.format(tests=str(REPO / "tests"), which=which, folder=str(folder), family=family)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    rise = json.loads(out.stdout.strip().splitlines()[-1])["touched"]
    size = sum(f.stat().st_size for f in (folder / "text_encoder").glob("*.safetensors"))
    return rise / size


def loading_only(args: argparse.Namespace) -> None:
    """The loading peaks alone, written into the stored results' rows of the same family, dtype and depth."""
    path = REPO / "bench" / "results" / "llm.json"
    stored = json.loads(path.read_text()) if path.is_file() else {"results": []}
    rows = []
    with tempfile.TemporaryDirectory(prefix="sdclip-bench-llm-") as tmp:
        for family in args.families.split(","):
            for name in args.dtypes.split(","):
                folder = build(Path(tmp), family, args.layers, dtype_of(name))
                peaks = {w: loading_peak(folder, family, w) for w in ("sdclip", "transformers")}
                shutil.rmtree(folder)
                item = next((r for r in stored["results"] if (r["family"], r["dtype"], r["layers"]) ==
                             (family, name, args.layers)), None)
                if item is None:
                    item = dict(family=family, dtype=name, layers=args.layers)
                    stored["results"].append(item)
                item.update(peak_over_bytes_sdclip=peaks["sdclip"], peak_over_bytes_transformers=peaks["transformers"])
                rows.append([family, name, f"{peaks['sdclip']:.2f}", f"{peaks['transformers']:.2f}"])
                print(rows[-1], flush=True)
    table = md_table(["family", "dtype", "peak÷bytes sdclip", "peak÷bytes transformers"], rows)
    print(table)
    write_json("llm", {**stored, "loading_machine": machine(), "loading_table": table})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--loading-only", action="store_true", help="only the loading peak (results/llm.json's peak fields)")
    args = p.parse_args()
    setup()
    if args.loading_only:
        loading_only(args)
        return
    from sdclip.conditioner import Conditioner

    rows, raw = [], []
    with tempfile.TemporaryDirectory(prefix="sdclip-bench-llm-") as tmp:
        for family in args.families.split(","):
            for name in args.dtypes.split(","):
                dtype = dtype_of(name)
                folder = build(Path(tmp), family, args.layers, dtype)
                t0 = time.perf_counter()
                pipe = diffusers_pipe(folder, family, dtype)
                theirs = run_diffusers(pipe, family)
                d_cold = time.perf_counter() - t0
                t0 = time.perf_counter()
                cond = Conditioner.from_pretrained(folder, preset="diffusers")
                ours = cond(CAPTIONS, NEGATIVES).diffusers_kwargs()
                s_cold = time.perf_counter() - t0
                d_enc = best_of(lambda: run_diffusers(pipe, family), repeats=args.repeats)

                def encode() -> dict:
                    cond.cache.clear()
                    return cond(CAPTIONS, NEGATIVES).diffusers_kwargs()

                s_enc = best_of(encode, repeats=args.repeats)
                cond(CAPTIONS, NEGATIVES)
                s_warm = best_of(lambda: cond(CAPTIONS, NEGATIVES), repeats=args.repeats)
                diff = difference(ours, theirs)
                del pipe, cond
                peaks = {w: loading_peak(folder, family, w) for w in ("sdclip", "transformers")}
                item = dict(family=family, dtype=name, layers=args.layers, diffusers_cold_s=d_cold, sdclip_cold_s=s_cold,
                            diffusers_encode_s=d_enc, sdclip_encode_s=s_enc, sdclip_warm_s=s_warm, max_abs_diff=diff,
                            peak_over_bytes_sdclip=peaks["sdclip"], peak_over_bytes_transformers=peaks["transformers"])
                raw.append(item)
                rows.append([family, name, f"{d_cold:.2f}", f"{s_cold:.2f}", f"{d_cold / s_cold:.2f}×",
                             f"{d_enc * 1e3:.0f}", f"{s_enc * 1e3:.0f}", f"{d_enc / s_enc:.2f}×", f"{s_warm * 1e3:.1f}",
                             f"{diff:.1e}", f"{peaks['sdclip']:.2f}", f"{peaks['transformers']:.2f}"])
                print(rows[-1], flush=True)
    table = md_table(["family", "dtype", "diffusers cold s", "sdclip cold s", "cold ×", "diffusers encode ms",
                      "sdclip encode ms", "encode ×", "sdclip warm ms", "max |Δ|", "peak÷bytes sdclip",
                      "peak÷bytes transformers"], rows)
    print(table)
    write_json("llm", {"machine": machine(), "layers": args.layers, "captions": CAPTIONS, "negatives": NEGATIVES,
                       "results": raw, "table": table})


if __name__ == "__main__":
    main()
