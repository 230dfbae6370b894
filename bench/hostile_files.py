"""Hostile-file campaign (issue 16): build the generated corpus and put every file through every entry point.

    python bench/hostile_files.py [--cli]

Entry points: open_tensor_file, load_text_encoders, Conditioner.from_pretrained + a call in each preset
(models, model folders, tokenizer folders); load_embedding, EmbeddingLibrary.load_dir and the Conditioner
with the embedding (embeddings and embedding folders); with --cli also `sdclip encode` in a subprocess for
every model file (exit 0 with a finite file, or exit 2 with one `sdclip:` line and no file).
Reports files tried, refused with a documented error, loaded, crashes (anything else), rule breaks and
whether any pickle payload ran; writes bench/results/hostile.json (temp file + os.replace).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
RESULTS = REPO / "bench" / "results" / "hostile.json"


def _cli(case, root: Path) -> str:
    """`sdclip encode` on a model case: 'ok' (finite file), 'refused' (exit 2, one line) or 'CRASH …'."""
    out = root / "cli-out.safetensors"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "sdclip", "encode", "--model", str(case.path), "--prompt", "a photo of a cat",
           "--out", str(out), "--dtype", {"torch.float16": "fp16", "torch.bfloat16": "bf16"}.get(str(case.dtype), "fp32")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    err = r.stderr.strip()
    if r.returncode == 2 and err.startswith("sdclip:") and "Traceback" not in err and not out.exists():
        return "refused"
    if r.returncode == 0 and out.exists():
        from safetensors.torch import load_file
        import torch

        if all(bool(torch.isfinite(t.float()).all()) for t in load_file(str(out)).values()):
            return "ok"
        return "CRASH wrote a non-finite file"
    return f"CRASH exit {r.returncode}: {err[-300:]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cli", action="store_true", help="also run `sdclip encode` on every model case (slow)")
    args = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    import hostile_corpus as hc

    torch.set_num_threads(min(2, os.cpu_count() or 2))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases = hc.build(root)
        rows, calls, crashes, problems = [], 0, [], []
        for case in cases:
            out = hc.run_case(case, root)
            if args.cli and case.kind == "model":
                out.results["sdclip encode"] = _cli(case, root)
            calls += len(out.results)
            refused = any(v.startswith("refused") for v in out.results.values())
            crashed = [f"{case.name} via {k}: {v[:200]}" for k, v in out.results.items() if v.startswith("CRASH")]
            crashes += crashed
            problems += [f"{case.name}: {p}" for p in out.problems]
            rows.append({"name": case.name, "kind": case.kind, "expect": case.expect, "refused": refused,
                         "results": {k: v[:300] for k, v in out.results.items()}, "problems": out.problems})
        executed = hc.marker_of(root).exists()
    summary = {
        "files_tried": len(rows),
        "hostile_or_broken": sum(r["expect"] == "refuse" for r in rows),
        "refused_with_documented_error": sum(r["expect"] == "refuse" and r["refused"] and not r["problems"] for r in rows),
        "loaded_cleanly": sum(r["expect"] == "load" and not r["problems"] for r in rows),
        "entry_point_calls": calls,
        "crashes": len(crashes),
        "rule_breaks": len(problems),
        "payloads_executed": int(executed),
        "seconds": round(time.perf_counter() - t0, 1),
        "cli": args.cli,
    }
    print(json.dumps(summary, indent=1))
    for line in (crashes + problems)[:40]:
        print(" ", line)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = RESULTS.with_suffix(".json.tmp")
    with open(tmp_out, "w") as fh:
        json.dump({"summary": summary, "crashes": crashes, "problems": problems, "cases": rows}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp_out, RESULTS)


if __name__ == "__main__":
    main()
