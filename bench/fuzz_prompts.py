"""Long fuzz run of the syntax and tokenizer stages, every dialect × normalisation (issue 16's campaign).

Three measurements, reproduced by one command:
1. random prompts (seeded; syntax-heavy alphabet, words, Unicode, tags, `embedding:` references) through
   parse + tokenize in every dialect × normalisation, with both embedding rules, plus A1111 scheduling:
   calls made and crashes (any exception other than the documented ones; goal 0);
2. the pathological shapes of tests/syntax/test_fuzz_prompts.py at 100 kB in every dialect × normalisation:
   the slowest call, in CPU seconds per 100 kB (goal ≤ 1 s);
3. 1 MB and 10 MB prompts (an ordinary weighted prompt repeated) in each preset's dialect and
   normalisation, each in a fresh process: peak resident memory above the text itself, and time.

    python bench/fuzz_prompts.py [--minutes M] [--seed S] [--no-big]

Prints a summary and writes bench/results/fuzz.json (temp file + os.replace).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_fuzz_prompts import PATHOLOGICAL, is_documented, run_call  # noqa: E402

from sdclip.syntax import DIALECTS, schedule  # noqa: E402
from sdclip.tokenizer import NORMALIZATIONS, Tokenizer  # noqa: E402

RESULTS = REPO / "bench" / "results" / "fuzz.json"
#: each preset's dialect and normalisation (sdclip.conventions.presets)
PRESET_PATHS = {"a1111": ("a1111", "hf-slow"), "comfy": ("comfy", "hf-slow"), "compel": ("compel", "hf-fast"),
                "diffusers": ("plain", "hf-fast")}
ATOMS = list('()[]{}:|\\"+-.,=<>!?&;#\'') + [
    " ", "  ", "\n", "\t", "a", "b", "cat", "red fox", "photo", "AND", "BREAK", "embedding:", "embedding:ab",
    "<lora:x:0.8>", "<e>", "ab", "ſ", "µ-style", "é", "猫", "ﬁ", "&amp;", "’s", "\u0301", "\ud800", "\x00",
    "1", "0.5", "1.1", "1e3", "-2", "inf", "nan", ".blend(1,2)", ".and()", "++", "--", "<|endoftext|>",
    "İ", "ß", "\u200b", "🦊", "Ã©",
]


def random_prompt(rng: random.Random) -> str:
    n = rng.choice((1, 3, 10, 30, 100, 300))
    return "".join(rng.choice(ATOMS) if rng.random() < 0.8 else chr(rng.randrange(0x20, 0x3000)) for _ in range(n))


def fuzz(minutes: float, seed: int) -> dict:
    rng = random.Random(seed)
    deadline = time.monotonic() + minutes * 60
    prompts = calls = 0
    crashes: list[dict] = []
    slowest = (0.0, "", "", "")
    while time.monotonic() < deadline:
        text = random_prompt(rng)
        prompts += 1
        for dialect in DIALECTS:
            for normalize in NORMALIZATIONS:
                match = rng.choice(("word", "token-ids"))
                unknown = rng.choice(("error", "drop"))
                t = time.process_time()
                try:
                    run_call(text, dialect, normalize, match, unknown)
                except Exception as e:  # noqa: BLE001 - classify every exception
                    if not is_documented(e, text):
                        crashes.append({"text": text, "dialect": dialect, "normalize": normalize,
                                        "error": f"{type(e).__name__}: {e}"[:300]})
                calls += 1
                dt = time.process_time() - t
                if dt > slowest[0]:
                    slowest = (dt, text[:80], dialect, normalize)
        try:
            schedule(text, rng.randint(1, 50), hires_steps=rng.choice((None, rng.randint(1, 30))))
        except Exception as e:  # noqa: BLE001
            if not is_documented(e, text):
                crashes.append({"text": text, "dialect": "a1111 schedule", "error": f"{type(e).__name__}: {e}"[:300]})
        calls += 1
    return {"prompts": prompts, "calls": calls, "crashes": len(crashes), "crash_samples": crashes[:20],
            "slowest_random_call_s": round(slowest[0], 4), "slowest_random_call": slowest[1:]}


def pathological(size: int = 100_000) -> dict:
    worst = []
    for name, make in PATHOLOGICAL.items():
        text = make(size)
        for dialect in DIALECTS:
            for normalize in NORMALIZATIONS:
                t, w = time.process_time(), time.perf_counter()
                try:
                    run_call(text, dialect, normalize)
                except Exception as e:  # noqa: BLE001
                    if not is_documented(e, text):
                        raise
                cpu, wall = time.process_time() - t, time.perf_counter() - w
                worst.append((cpu / len(text) * 100_000, wall / len(text) * 100_000, name, dialect, normalize))
    worst.sort(reverse=True)
    return {"shapes": len(PATHOLOGICAL), "calls": len(worst),
            "slowest_cpu_s_per_100kB": round(worst[0][0], 3), "slowest_wall_s_per_100kB": round(worst[0][1], 3),
            "top5": [{"cpu_s_per_100kB": round(c, 3), "wall_s_per_100kB": round(w, 3), "shape": n, "dialect": d,
                      "normalize": m} for c, w, n, d, m in worst[:5]]}


_CHILD = """
import json, resource, sys, time
from sdclip.tokenizer import Tokenizer
sys.path.insert(0, sys.argv[4])
from test_fuzz_prompts import run_call
dialect, normalize, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
Tokenizer.default(normalize).encode("warm up")
unit = {"compel": "a photo of a (red fox)1.2, snow+, ", "plain": "a photo of a red fox in the snow, "}.get(
    dialect, "a photo of a (red fox:1.2), [snow], ")
text = (unit * (size // len(unit) + 1))[:size]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.process_time()
tokens = run_call(text, dialect, normalize)
cpu = time.process_time() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"tokens": tokens, "cpu_s": cpu, "peak_mb_above_text": (peak - base) / 1024, "peak_mb": peak / 1024}))
"""


def big(sizes=(1_000_000, 10_000_000)) -> list[dict]:
    out = []
    for preset, (dialect, normalize) in PRESET_PATHS.items():
        for size in sizes:
            res = subprocess.run([sys.executable, "-c", _CHILD, dialect, normalize, str(size), str(REPO / "tests")],
                                 capture_output=True, text=True, timeout=1800)
            if res.returncode != 0:
                out.append({"preset": preset, "bytes": size, "error": res.stderr.strip().splitlines()[-1:]})
                continue
            row = json.loads(res.stdout)
            row.update({"preset": preset, "dialect": dialect, "normalize": normalize, "bytes": size,
                        "cpu_s_per_100kB": round(row["cpu_s"] / size * 100_000, 3)})
            out.append(row)
            print(f"  {preset:9} {size / 1e6:>4.0f} MB: {row['tokens']:>9} tokens, {row['cpu_s']:.1f} s CPU, "
                  f"peak +{row['peak_mb_above_text']:.0f} MB", flush=True)
    return out


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fuzz-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="how long to fuzz random prompts (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the prompt generator (default 0)")
    ap.add_argument("--no-big", action="store_true", help="skip the 1 MB / 10 MB memory runs")
    args = ap.parse_args()
    for m in NORMALIZATIONS:
        Tokenizer.default(m).encode("warm up")
    print(f"fuzzing random prompts for {args.minutes} min …", flush=True)
    result = {"machine": {"cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]}, "seed": args.seed,
              "fuzz": fuzz(args.minutes, args.seed)}
    f = result["fuzz"]
    print(f"  {f['prompts']} prompts, {f['calls']} calls, {f['crashes']} crashes", flush=True)
    print("pathological shapes at 100 kB …", flush=True)
    result["pathological"] = pathological()
    p = result["pathological"]
    print(f"  {p['calls']} calls; slowest {p['slowest_cpu_s_per_100kB']} s CPU per 100 kB "
          f"({p['top5'][0]['shape']}, {p['top5'][0]['dialect']}, {p['top5'][0]['normalize']})", flush=True)
    if not args.no_big:
        print("1 MB and 10 MB prompts, one fresh process each …", flush=True)
        result["big"] = big()
    result["peak_rss_mb_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_json(RESULTS, result)
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
