"""The reliability campaign in one command: fuzzed prompts, hostile files, thread stress, kill -9 runs.

    python bench/reliability.py [--minutes 3] [--kills 10] [--threads 8]

    python bench/reliability.py --only layouts,inspect   # just the time/memory sections (minutes)

Runs bench/fuzz_prompts.py and bench/hostile_files.py (each writes its own JSON), then:
- thread stress: one SD1 and one SDXL Conditioner (tiny random models) shared by `--threads` threads with a
  cache far smaller than one request; every result compared with a single-threaded one (errors, mismatches);
- kill -9: `sdclip encode --prompts-file` and `sdclip embed` SIGKILLed at random moments; after each kill no
  `--out` file may exist unless complete, and a re-run (embed: resume) must give the uninterrupted result.
- layouts: 100 kB pathological shapes through `prepare` in every dialect × normalisation × layout (window with
  stride 1 and 50, no row limit): the slowest call in CPU seconds per 100 kB (goal ≤ 1 s; a documented
  refusal such as the window bound counts with its time);
- inspect: 10 MB prompts of `a AND ` parts, BREAKs and weighted text through `sdclip inspect` (human and
  --json), each in a fresh process: wall and CPU time, peak RSS.
Writes bench/results/reliability.json (sections not run are kept from the last run) and prints the figures
the README's Reliability section shows.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import RESULTS, machine, write_json  # noqa: E402

PROMPTS = [f"a (red:1.{k % 5}) fox number {k}, BREAK a forest at dusk {k % 3}" for k in range(32)]


def run_script(name: str, result: str, *args: str, reuse: bool = False) -> dict:
    """Run bench/NAME (unless `reuse` and its result exists) and read bench/results/RESULT.json."""
    path = RESULTS / f"{result}.json"
    if not (reuse and path.exists()):
        subprocess.run([sys.executable, str(HERE / name), *args], check=True)
    return json.loads(path.read_text())


def thread_stress(threads: int, calls: int) -> dict:
    import torch
    from tiny_models import tiny_family

    from sdclip.conditioner import Conditioner
    from sdclip.conventions.presets import Options
    from sdclip.encoder import encoders_from_modules
    from sdclip.encoder.batching import RowCache

    out = {}
    for family in ("sd1", "sdxl"):
        encoders = encoders_from_modules(tiny_family(family).models).encoders
        single = Conditioner(encoders, family, Options.preset("a1111"))
        want = {p: single(p, "blurry") for p in PROMPTS}
        shared = Conditioner(encoders, family, Options.preset("a1111"), cache=RowCache(max_rows=3))
        errors, mismatches, done = [], 0, 0
        lock = threading.Lock()

        def work(t: int) -> None:
            nonlocal mismatches, done
            rng = random.Random(t)
            for _ in range(calls):
                p = rng.choice(PROMPTS)
                try:
                    got = shared(p, "blurry")
                except Exception as exc:  # noqa: BLE001 - counted
                    errors.append(repr(exc))
                    continue
                same = torch.allclose(got.positive.embeds, want[p].positive.embeds, atol=1e-5, rtol=0)
                with lock:
                    done += 1
                    mismatches += 0 if same else 1

        pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        start = time.perf_counter()
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        out[family] = {"threads": threads, "calls": done + len(errors), "errors": len(errors),
                       "mismatches": mismatches, "seconds": round(time.perf_counter() - start, 2)}
    return out


def kill_runs(kills: int) -> dict:
    from tiny_models import tiny_family, write_layout
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = write_layout("single.safetensors", tiny_family("sd1"), root / "model")
        captions = root / "captions.txt"
        captions.write_text("\n".join(f"{p}, variant {k}" for k in range(12) for p in PROMPTS) + "\n")
        rng = random.Random(0)
        bad_encode = 0
        for k in range(kills):
            out = root / f"enc{k}.safetensors"
            proc = subprocess.Popen([sys.executable, "-m", "sdclip", "encode", "--model", str(model), "--prompts-file",
                                     str(captions), "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.5, 6.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if out.exists():  # finished before the kill: must then be whole
                try:
                    bad_encode += int(load_file(out)["prompt_embeds"].shape[0] != 12 * len(PROMPTS))
                except Exception:  # noqa: BLE001 - a half-written result
                    bad_encode += 1
        ref = root / "ref"
        subprocess.run([sys.executable, "-m", "sdclip", "embed", "--model", str(model), "--captions", str(captions),
                        "--out", str(ref), "--shard-size", "32"], check=True, capture_output=True)
        lost = 0
        job = root / "job"
        for k in range(kills):
            proc = subprocess.Popen([sys.executable, "-m", "sdclip", "embed", "--model", str(model), "--captions",
                                     str(captions), "--out", str(job), "--shard-size", "32"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.5, 6.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        subprocess.run([sys.executable, "-m", "sdclip", "embed", "--model", str(model), "--captions", str(captions),
                        "--out", str(job), "--shard-size", "32"], check=True, capture_output=True)
        verify = subprocess.run([sys.executable, "-m", "sdclip", "embed", "--verify", str(job)], capture_output=True)
        for shard in sorted(ref.glob("shard-*.safetensors")):
            a, b = load_file(shard), load_file(job / shard.name)
            lost += int(not all(a[key].equal(b[key]) for key in a))
        return {"encode_kills": kills, "encode_half_written": bad_encode, "embed_kills": kills,
                "embed_resumed_shards_differing": lost, "embed_verify_ok": verify.returncode == 0}


#: shapes for the layouts section: plain words, CJK (3 tokens a character), embedding runs, BREAKs, AND, weights
LAYOUT_SHAPES = ("words", "cjk", "embedding refs", "break", "and", "weighted groups", "digits")
LAYOUT_CASES = (("truncate", 50), ("chunk", 50), ("window", 50), ("window", 1), ("compress", 50), ("long", 50))


def layouts(size: int = 100_000) -> dict:
    """The slowest `prepare` per 100 kB over shapes × dialects × normalisations × layouts (family sdxl: two
    encoders; longclip for `long`)."""
    from dataclasses import replace

    sys.path.insert(0, str(HERE.parent / "tests" / "syntax"))
    from test_fuzz_prompts import EMBEDDINGS, PATHOLOGICAL, is_documented

    from sdclip.layout import RowLimitError

    from sdclip.conventions.family import get_family
    from sdclip.conventions.presets import Options
    from sdclip.prepare import prepare
    from sdclip.syntax import DIALECTS
    from sdclip.tokenizer import NORMALIZATIONS, Tokenizer

    worst, calls, refused = [], 0, 0
    for name in LAYOUT_SHAPES:
        text = PATHOLOGICAL[name](size)
        for dialect in DIALECTS:
            for normalize in NORMALIZATIONS:
                tok = Tokenizer.default(normalize)
                for mode, stride in LAYOUT_CASES:
                    options = replace(Options.preset("a1111"), dialect=dialect, normalize=normalize, layout=mode,
                                      stride=stride)
                    family = get_family("longclip" if mode == "long" else "sdxl")
                    t = time.process_time()
                    try:
                        prepare(text, options, family, tok, EMBEDDINGS)
                    except Exception as e:  # noqa: BLE001 - documented refusals count, with their time
                        if not (is_documented(e, text) or isinstance(e, RowLimitError)):
                            raise
                        refused += 1
                    cpu = time.process_time() - t
                    calls += 1
                    worst.append((cpu / len(text) * 100_000, name, dialect, normalize, f"{mode}/{stride}"))
    worst.sort(reverse=True)
    by_layout: dict[str, dict] = {}
    for c, n, d, m, lay in worst:  # slowest first: the first seen per layout is its worst
        by_layout.setdefault(lay, {"cpu_s_per_100kB": round(c, 3), "shape": n, "dialect": d, "normalize": m})
    return {"calls": calls, "refused": refused, "slowest_cpu_s_per_100kB": round(worst[0][0], 3),
            "slowest_by_layout": by_layout,
            "top5": [{"cpu_s_per_100kB": round(c, 3), "shape": n, "dialect": d, "normalize": m, "layout": lay}
                     for c, n, d, m, lay in worst[:5]]}


_INSPECT_CHILD = """
import contextlib, io, resource, sys, time
from sdclip.cli.main import main
text = open(sys.argv[1], encoding="utf-8").read()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t, w = time.process_time(), time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()) as out:
    rc = main(["inspect", *sys.argv[2:], text])
print(rc, time.process_time() - t, time.perf_counter() - w, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      base / 1024, len(out.getvalue()))
"""


def inspect_big(size: int = 10_000_000, timeout: float = 600) -> list[dict]:
    """10 MB prompts through `sdclip inspect` (human view and --json), each in a fresh process."""
    units = {"and": "a AND ", "break": "a BREAK ", "weighted": "a photo of a (red fox:1.2), [snow], "}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, unit in units.items():
            path = Path(tmp) / f"{name}.txt"
            path.write_text((unit * (size // len(unit) + 1))[:size], encoding="utf-8")
            for flags in ((), ("--json",)):
                row = {"prompt": name, "bytes": size, "json": bool(flags)}
                try:
                    res = subprocess.run([sys.executable, "-c", _INSPECT_CHILD, str(path), *flags], capture_output=True,
                                         text=True, timeout=timeout)
                except subprocess.TimeoutExpired:
                    row["error"] = f"did not finish in {timeout:.0f} s"
                    out.append(row)
                    continue
                if res.returncode != 0:
                    row["error"] = res.stderr.strip().splitlines()[-1:]
                else:
                    rc, cpu, wall, peak, base, printed = res.stdout.split()[-6:]
                    row.update(exit=int(rc), cpu_s=round(float(cpu), 2), wall_s=round(float(wall), 2),
                               peak_rss_mb=round(float(peak)), peak_rss_mb_before=round(float(base)),
                               output_chars=int(printed))
                print(f"  inspect {name:8} {'--json' if flags else 'human ':6}: {row}", flush=True)
                out.append(row)
    return out


SECTIONS = ("fuzz", "hostile", "threads", "kill9", "layouts", "inspect")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--calls", type=int, default=40, help="calls per thread")
    ap.add_argument("--reuse", action="store_true", help="read the fuzz and hostile-file results already in bench/results")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    ap.add_argument("--inspect-bytes", type=int, default=10_000_000, help="size of the inspect section's prompts")
    args = ap.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    previous = RESULTS / "reliability.json"
    report = json.loads(previous.read_text()) if previous.exists() else {}
    report["machine"] = machine("cpu")
    if "fuzz" in only:
        report["fuzz"] = run_script("fuzz_prompts.py", "fuzz", "--minutes", str(args.minutes), reuse=args.reuse)
    if "hostile" in only:
        report["hostile"] = run_script("hostile_files.py", "hostile", reuse=args.reuse)
    if "threads" in only:
        report["threads"] = thread_stress(args.threads, args.calls)
    if "kill9" in only:
        report["kill9"] = kill_runs(args.kills)
    if "layouts" in only:
        report["layouts"] = layouts()
    if "inspect" in only:
        report["inspect"] = inspect_big(args.inspect_bytes)
    write_json("reliability", report)
    print(json.dumps({k: v for k, v in report.items() if k in only and k not in ("fuzz", "hostile")}, indent=1))


if __name__ == "__main__":
    main()
