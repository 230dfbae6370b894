"""Run every benchmark, each in its own process, and merge their tables into one report.

    python bench/run.py [--quick] [--device cpu|cuda] [--only tokenizer,encoder,end_to_end,loading,t5,...]

Each benchmark is a script in bench/ that prints a markdown table and writes bench/results/NAME.json
(bench_tokenizer.py → tokenizer.json, bench_encoder.py → encoder.json, bench_end_to_end.py →
end_to_end.json, bench_loading.py → loading.json, and likewise t5, sd3_flux, embed, serve, attention;
the reliability campaign is bench/reliability.py). Separate processes keep them from disturbing each
other: allocator state, thread pools, and above all peak memory (the loading benchmark measures
ru_maxrss of fresh processes). This script then writes bench/results/summary.json (machine, command,
wall times, every benchmark's numbers) and bench/results/REPORT.md (the tables; what README's
Performance section shows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import RESULTS, machine, setup, write_json  # noqa: E402

BENCHES = {  # name → (script, supports --device, title)
    "tokenizer": ("bench_tokenizer.py", False, "Tokenizer (prompts/s, tokens/s, id mismatches)"),
    "encoder": ("bench_encoder.py", True, "Encoder (rows of 77 tokens per second, random weights)"),
    "end_to_end": ("bench_end_to_end.py", True, "End to end (weighted ~150-token prompt + negative)"),
    "loading": ("bench_loading.py", False, "Loading text encoders from a single-file checkpoint"),
    "t5": ("bench_t5.py", False, "T5 encoder vs transformers' T5EncoderModel; T5 loading memory"),
    "sd3_flux": ("bench_sd3_flux.py", False, "SD3 / Flux prompt + negative vs diffusers' encode_prompt"),
    "embed": ("bench_embed.py", False, "sdclip embed vs a plain encode_prompt loop; bookkeeping; Ray"),
    "serve": ("bench_serve.py", False, "sdclip serve: loopback load test"),
    "attention": ("bench_attention.py", False, "Attention tracing: traced ÷ untraced generation"),
}
#: benchmarks that have no --quick flag (they are sized to a few minutes already), with the --quick arguments
#: run.py gives them instead
QUICK_ARGS = {"t5": [], "sd3_flux": ["--dtypes", "fp32"], "embed": ["--captions", "64", "--no-ray"], "serve": [],
              "attention": []}


def run_one(name: str, quick: bool, device: str) -> dict:
    script, takes_device, _ = BENCHES[name]
    cmd = [sys.executable, str(HERE / script)]
    if quick:
        cmd += QUICK_ARGS.get(name, ["--quick"])
    if takes_device:
        cmd += ["--device", device]
    print(f"\n## {name}: {' '.join(cmd[1:])}\n", flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=HERE.parent)
    return {"command": cmd[1:], "returncode": proc.returncode, "seconds": time.perf_counter() - t}


def reported(name: str) -> dict:
    """For --report-only: a benchmark's run as its JSON records it (missing JSON: not run)."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return {"returncode": None, "seconds": 0.0}
    meta = json.loads(path.read_text()).get("meta", {})
    return {"returncode": 0, "seconds": float(meta.get("seconds", 0.0))}


def tables_of(name: str) -> str:
    """The markdown a benchmark wrote (its JSON's tables; the tokenizer's is rebuilt from its rows)."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return "_not run_"
    data = json.loads(path.read_text())
    if "tables" in data:
        return "\n\n".join(data["tables"].values())
    if name == "tokenizer":
        return tokenizer_table(data)
    return "```\n" + json.dumps(data, indent=1)[:2000] + "\n```"


def tokenizer_table(data: dict) -> str:
    """bench_tokenizer.py's rows, with each tool's speed as sdclip (exact mode) ÷ that tool."""
    from _common import md_table

    rows = data["results"]
    meta = data["meta"]
    ours = {r["mode"]: r["prompts_per_s"] for r in rows if r["tokenizer"].startswith("sdclip") and "cold" not in r["tokenizer"]}
    out = []
    for r in rows:
        mm = r["mismatches_vs_mode_reference"]
        ratio = "" if r["tokenizer"].startswith("sdclip") else f"{ours.get(r['mode'], 0) / r['prompts_per_s']:.1f}×"
        out.append([r["tokenizer"], r["prompts_per_s"], r["tokens_per_s"], r.get("prompts_per_cpu_s", "—"),
                    "n/a" if mm is None else mm, r["differs_from_open_clip"], ratio])
    head = (f"{meta['prompts']:,} prompts, {meta['mean_tokens']} tokens on average, best of {meta['repeats']}"
            f"{', load average %s' % meta['load_average_1min'] if 'load_average_1min' in meta else ''}\n\n")
    return head + md_table(["tokenizer", "prompts/s", "tokens/s", "prompts per CPU-second",
                            "id mismatches vs its exact reference",
                            "prompts differing from open_clip", "sdclip (same mode) ÷ this"], out)


def update_readme(report: str, device: str) -> None:
    """Put the report between README's `<!-- bench:DEVICE:start -->` / `<!-- bench:DEVICE:end -->` markers
    (in its Performance section); nothing else in README is touched."""
    readme = HERE.parent / "README.md"
    text = readme.read_text()
    start, end = f"<!-- bench:{device}:start -->", f"<!-- bench:{device}:end -->"
    if start not in text or end not in text:
        print(f"README.md has no {start} … {end} block; not updated")
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{report}{end}{tail}")
    print("updated README.md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller corpora and models: a few minutes on 2 cores")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="where the encoder and end-to-end benchmarks run (tokenizer and loading: CPU)")
    ap.add_argument("--readme", action="store_true",
                    help="also replace the table block of README.md's Performance section with this report")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: rebuild REPORT.md / summary.json from the JSON files already in bench/results")
    ap.add_argument("--only", default=",".join(BENCHES), help="comma list of " + ", ".join(BENCHES))
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    setup("cpu")
    load_before = os.getloadavg()[0]
    if args.report_only:
        runs = {n: reported(n) for n in names}
    else:
        runs = {n: run_one(n, args.quick, args.device) for n in names}
    info = machine(args.device)
    command = "python bench/run.py" + (" --quick" if args.quick else "") + (
        f" --device {args.device}" if args.device != "cpu" else "")
    lines = [
        f"Measured with `{command}` on {info['cpu']}, {info['cpus']} cores ({info['threads']} torch threads, "
        f"{info['cpu_capability']}), torch {info['torch']}, Python {info['python']}"
        + (f", GPU {info['gpu']}" if "gpu" in info else "")
        + (f"; {sum(r['seconds'] for r in runs.values()):.0f} s in all" if not args.report_only else "")
        + ". 1-minute load average "
        f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
        + (f" (above {info['cpus']}: the cores were shared with other work, and the numbers are slower and noisier "
           "than on an idle machine)." if max(load_before, os.getloadavg()[0]) > (info["cpus"] or 1) else ".")
        + (" Rebuilt from the JSON files; each benchmark's own load average is in its JSON."
           if args.report_only else ""),
    ]
    for n in names:
        rc = runs[n]["returncode"]
        status = "" if rc == 0 else " — not run" if rc is None else f" — FAILED (exit {rc})"
        lines += ["", f"#### {BENCHES[n][2]}{status}", "", tables_of(n)]
    report = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "REPORT.md").write_text(report)
    parts = {n: json.loads((RESULTS / f"{n}.json").read_text()) for n in names if (RESULTS / f"{n}.json").exists()}
    info["load_average_at_start"] = load_before
    write_json("summary", {"meta": info, "command": command, "runs": runs, "results": parts})
    print("\n" + "=" * 80 + "\n")
    print(report)
    print(f"wrote {RESULTS / 'REPORT.md'} and {RESULTS / 'summary.json'}")
    if args.readme:
        update_readme(report, args.device)
    if any(r["returncode"] not in (0, None) for r in runs.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
