"""Flux.2 [dev] and [klein]: sdclip against diffusers 0.42.1's own `encode_prompt`, side by side in one run.

Real depth (Mistral Small 3.1: 40 blocks, Qwen3-4B: 36) and real vocabularies (131,072 / 151,936: diffusers'
text encoders are Mistral3ForConditionalGeneration and Qwen3ForCausalLM, whose forward also computes the LM
head's logits for every position), reduced width (`--width`, heads of 128 as released, the released MLP ratio),
random weights, saved as diffusers folders by tests/tiny_llm.py. Both read hidden_states 10, 20, 30 (Klein 9,
18, 27): diffusers runs every block and the LM head; sdclip runs 30 (27) blocks and no head. A real block is
≈ 20× (Mistral) / 100× (Qwen3-4B) wider in compute than here, so the ratio at full size lies between the
blocks-only ratio (40/30, 36/27) and the one measured here (which the LM head weighs more).

- cold: load the folder (sdclip `Conditioner.from_pretrained`; diffusers: transformers `from_pretrained` of the
  text encoder and tokenizer, the pipeline around them) and encode the captions (and Klein's "" negatives, as
  its CFG does; Flux.2 [dev] takes no negative, sdclip still encodes its "" row).
- encode: loaded, encoded again (sdclip's row cache emptied first); warm: sdclip's same call from its cache.
- CPU s: the process's CPU time (all threads) of the best encode, the fairer measure on a shared, loaded machine.

    python bench/bench_flux2.py [--width 256] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from _common import REPO, best_of, machine, md_table, setup, write_json

CAPTIONS = ["a red fox sitting in the snow at dawn, soft light", "a wooden boat on a calm lake, misty mountains"]
#: depth, vocabulary, KV heads and MLP ÷ width of the released text encoders (config.json)
RELEASED = {"flux2": dict(num_hidden_layers=40, vocab_size=131072, mlp=32768 / 5120, kv=8 / 32),
            "flux2-klein": dict(num_hidden_layers=36, vocab_size=151936, mlp=9728 / 2560, kv=8 / 32)}


def config(family: str, width: int) -> dict:
    r = RELEASED[family]
    heads = max(1, width // 128)
    return dict(hidden_size=width, num_attention_heads=heads, num_key_value_heads=max(1, round(heads * r["kv"])),
                head_dim=128, intermediate_size=round(width * r["mlp"]), num_hidden_layers=r["num_hidden_layers"],
                vocab_size=r["vocab_size"])


def cpu_of(fn: Callable[[], object], repeats: int) -> float:
    """Least process CPU time (every thread's) of `repeats` calls: what the work costs, whatever else runs."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def run_diffusers(pipe, family: str) -> torch.Tensor:  # noqa: ANN001
    embeds, _ = pipe.encode_prompt(CAPTIONS, device="cpu")
    if family == "flux2-klein":  # its CFG encodes "" per prompt (pipeline_flux2_klein.py:752-760)
        pipe.encode_prompt([""] * len(CAPTIONS), device="cpu")
    return embeds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--families", default="flux2,flux2-klein")
    args = p.parse_args()
    setup()
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_llm import oracle, tiny_folder

    from sdclip.conditioner import Conditioner

    warnings.simplefilter("ignore")
    rows, raw = [], []
    with tempfile.TemporaryDirectory(prefix="sdclip-bench-flux2-") as tmp, torch.no_grad():
        for family in args.families.split(","):
            folder = tiny_folder(Path(tmp), family, **config(family, args.width))
            t0 = time.perf_counter()
            pipe = oracle(folder, family)
            theirs = run_diffusers(pipe, family)
            d_cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            cond = Conditioner.from_pretrained(folder, preset="diffusers")
            ours = cond(CAPTIONS).diffusers_kwargs()["prompt_embeds"]
            s_cold = time.perf_counter() - t0
            d_enc = best_of(lambda: run_diffusers(pipe, family), repeats=args.repeats, warmup=0)

            def encode() -> object:
                cond.cache.clear()
                return cond(CAPTIONS)

            s_enc = best_of(encode, repeats=args.repeats, warmup=0)
            d_cpu = cpu_of(lambda: run_diffusers(pipe, family), args.repeats)
            s_cpu = cpu_of(encode, args.repeats)
            s_warm = best_of(lambda: cond(CAPTIONS), repeats=args.repeats)
            diff = float((ours - theirs).abs().max())
            blocks = (len(cond.encoders[0].model.layers), RELEASED[family]["num_hidden_layers"])
            del pipe, cond
            item = dict(family=family, width=args.width, blocks_run=blocks[0], blocks_stored=blocks[1],
                        diffusers_cold_s=d_cold, sdclip_cold_s=s_cold, diffusers_encode_s=d_enc, sdclip_encode_s=s_enc,
                        diffusers_encode_cpu_s=d_cpu, sdclip_encode_cpu_s=s_cpu, sdclip_warm_s=s_warm,
                        max_abs_diff=diff)
            raw.append(item)
            rows.append([family, f"{blocks[0]}/{blocks[1]}", f"{d_cold:.2f}", f"{s_cold:.2f}", f"{d_cold / s_cold:.2f}×",
                         f"{d_enc:.2f}", f"{s_enc:.2f}", f"{d_enc / s_enc:.2f}×", f"{d_cpu:.1f}", f"{s_cpu:.1f}",
                         f"{d_cpu / s_cpu:.2f}×", f"{s_warm * 1e3:.1f}", f"{diff:.1e}"])
            print(rows[-1], flush=True)
    table = md_table(["family", "blocks run", "diffusers cold s", "sdclip cold s", "cold ×", "diffusers encode s",
                      "sdclip encode s", "encode ×", "diffusers CPU s", "sdclip CPU s", "CPU ×", "sdclip warm ms",
                      "max |Δ|"], rows)
    print(table)
    print(write_json("flux2", {"machine": machine(), "width": args.width, "results": raw, "table": table}))


if __name__ == "__main__":
    main()
