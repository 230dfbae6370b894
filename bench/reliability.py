"""The reliability campaign in one command: fuzzed prompts, hostile files, thread stress, kill -9 runs.

    python bench/reliability.py [--minutes 3] [--kills 10] [--threads 8]

Runs bench/fuzz_prompts.py and bench/hostile_files.py (each writes its own JSON), then:
- thread stress: one SD1 and one SDXL Conditioner (tiny random models) shared by `--threads` threads with a
  cache far smaller than one request; every result compared with a single-threaded one (errors, mismatches);
- kill -9: `sdclip encode --prompts-file` and `sdclip embed` SIGKILLed at random moments; after each kill no
  `--out` file may exist unless complete, and a re-run (embed: resume) must give the uninterrupted result.
Writes bench/results/reliability.json and prints the figures the README's Reliability section shows.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--calls", type=int, default=40, help="calls per thread")
    ap.add_argument("--reuse", action="store_true", help="read the fuzz and hostile-file results already in bench/results")
    args = ap.parse_args()
    report = {"machine": machine("cpu")}
    report["fuzz"] = run_script("fuzz_prompts.py", "fuzz", "--minutes", str(args.minutes), reuse=args.reuse)
    report["hostile"] = run_script("hostile_files.py", "hostile", reuse=args.reuse)
    report["threads"] = thread_stress(args.threads, args.calls)
    report["kill9"] = kill_runs(args.kills)
    write_json("reliability", report)
    print(json.dumps({k: v for k, v in report.items() if k in ("threads", "kill9")}, indent=1))


if __name__ == "__main__":
    main()
