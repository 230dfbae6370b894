"""Tokenizer speed and exactness: sdclip (each normalisation) against the tools users run.

Corpus: ~60-token art prompts (tests/tokenizer_corpus.py `bench_corpus`, 10% carrying an edge-case
fragment: Unicode, entities, curly quotes, contractions). For each tokenizer: prompts/s and tokens/s
(best of 3 passes, 1 with --quick; sdclip also cold, i.e. a fresh instance with an empty piece cache;
wall time and, steadier on a shared machine, CPU time of all threads) and the
number of prompts whose ids differ from the exact reference of that mode.

    python bench/bench_tokenizer.py [--quick] [--n N]

Prints a markdown table and writes bench/results/tokenizer.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from tokenizer_corpus import bench_corpus  # noqa: E402

from sdclip.tokenizer import vocab as sd_vocab  # noqa: E402
from sdclip.tokenizer.clip import NORMALIZATIONS, Tokenizer  # noqa: E402


def best_of(fn, texts, repeats):
    """((best wall seconds, best CPU seconds of this process), result) over `repeats` runs.

    CPU seconds (all threads) are reported too: on a shared machine they are far less noisy than wall time.
    """
    best, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn(texts)
        best, cpu = min(best, time.perf_counter() - t), min(cpu, time.process_time() - c)
    return (best, cpu), out


def load_open_clip():
    """open_clip's SimpleTokenizer, its module loaded alone; restores TOKENIZERS_PARALLELISM, which it sets."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    spec = importlib.util.find_spec("open_clip")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
    mod_spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if before is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = before
    return module.SimpleTokenizer()


def write_folder(folder: Path) -> None:
    vocab, merges = sd_vocab.packaged()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")


SLOW_SCRIPT = """
import json, sys, time
from transformers import CLIPTokenizer
texts = json.load(open(sys.argv[1], encoding='utf-8'))
tok = CLIPTokenizer(sys.argv[2] + '/vocab.json', sys.argv[2] + '/merges.txt')
best, cpu = float('inf'), float('inf')
for _ in range(int(sys.argv[4])):
    t, c = time.perf_counter(), time.process_time()
    ids = [tok.encode(x, add_special_tokens=False) for x in texts]
    best, cpu = min(best, time.perf_counter() - t), min(cpu, time.process_time() - c)
json.dump({'seconds': [best, cpu], 'ids': ids}, open(sys.argv[3], 'w'))
"""


def run_slow(texts, folder: Path, repeats: int):
    hf4 = REPO / ".side" / "hf4"
    if not (hf4 / "transformers").is_dir():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.json", Path(tmp) / "out.json"
        inp.write_text(json.dumps(texts), encoding="utf-8")
        env = dict(os.environ, PYTHONPATH=str(hf4), TRANSFORMERS_VERBOSITY="error")
        subprocess.run([sys.executable, "-c", SLOW_SCRIPT, str(inp), str(folder), str(out), str(repeats)], env=env, check=True)
        data = json.loads(out.read_text())
    return data["seconds"], data["ids"]


def mismatches(a, b) -> int:
    return sum(x != y for x, y in zip(a, b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small corpus, one repeat")
    ap.add_argument("--n", type=int, default=None, help="number of prompts (default 20000, quick 2000)")
    args = ap.parse_args()
    n = args.n or (2000 if args.quick else 20000)
    repeats = 1 if args.quick else 3
    texts = bench_corpus(n)

    rows = []
    refs: dict[str, list[list[int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_folder(folder)

        from transformers import CLIPTokenizer

        hf = CLIPTokenizer.from_pretrained(str(folder))
        sec, ids = best_of(lambda ts: hf(ts, add_special_tokens=False)["input_ids"], texts, repeats)
        refs["hf-fast"] = ids
        rows.append(("transformers 5 CLIPTokenizer (Rust, batch)", "hf-fast", sec, ids))

        oc = load_open_clip()
        sec, ids = best_of(lambda ts: [oc.encode(t) for t in ts], texts, repeats)
        refs["openclip"] = ids
        rows.append(("open_clip SimpleTokenizer", "openclip", sec, ids))

        slow = run_slow(texts, folder, repeats)
        if slow is not None:
            refs["hf-slow"] = slow[1]
            rows.append(("transformers 4.57 CLIPTokenizer (Python, ftfy)", "hf-slow", slow[0], slow[1]))

        vocab, merges = sd_vocab.packaged()
        for mode in NORMALIZATIONS:
            fresh = Tokenizer(vocab, merges, mode)
            sec, ids = best_of(fresh.encode_batch, texts, 1)
            rows.append((f"sdclip {mode} (cold cache)", mode, sec, ids))
            sec, ids = best_of(fresh.encode_batch, texts, repeats)
            rows.append((f"sdclip {mode}", mode, sec, ids))

    tokens = sum(len(x) for x in refs["openclip"])
    results = []
    for name, mode, (sec, cpu), ids in rows:
        ref = refs.get(mode)
        results.append(
            {
                "tokenizer": name,
                "mode": mode,
                "prompts_per_s": round(len(texts) / sec),
                "tokens_per_s": round(sum(len(x) for x in ids) / sec),
                "prompts_per_cpu_s": round(len(texts) / cpu),
                "mismatches_vs_mode_reference": None if ref is None else mismatches(ids, ref),
                "differs_from_open_clip": mismatches(ids, refs["openclip"]),
            }
        )
    meta = {
        "prompts": len(texts),
        "mean_tokens": round(tokens / len(texts), 1),
        "repeats": repeats,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(
        f"\n{meta['prompts']} prompts, {meta['mean_tokens']} tokens each on average, best of {repeats}, "
        f"{meta['cpus']} CPUs, load average {meta['load_average_1min']}\n"
    )
    print("| tokenizer | prompts/s | tokens/s | prompts per CPU-s | mismatches vs its mode's reference | prompts differing from open_clip |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        mm = "n/a" if r["mismatches_vs_mode_reference"] is None else r["mismatches_vs_mode_reference"]
        row = [r["tokenizer"], f"{r['prompts_per_s']:,}", f"{r['tokens_per_s']:,}", f"{r['prompts_per_cpu_s']:,}"]
        print("| " + " | ".join(row + [str(mm), str(r["differs_from_open_clip"])]) + " |")
    out = REPO / "bench" / "results" / "tokenizer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
