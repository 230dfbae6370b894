"""CPU µs a caption of the embed job's validation scan (`sdclip.jobs.plan.scan` with `CaptionEncoder.check`),
this tree against another commit's, each in its own process, alternating, best of the runs.

    python bench/bench_scan.py --before 47b9701 --repeats 3 wan sdxl sd3 sd1 flux
    python bench/bench_scan.py --before 47b9701 --preset a1111 --captions FILE sdxl

The captions are `bench_embed.captions(2000)` (unique) unless --captions names a file; the models are the
tests' tiny ones (`bench_embed.family_model`). Where the tree's Conditioner takes `prepare(spans=False)`, the
check is run with it (what `CaptionEncoder.check` calls once it reads spanless rows). Process CPU time, not
wall: the shared machine's load moves wall time 2×.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE = r'''
import sys, tempfile, time
from dataclasses import asdict
from pathlib import Path
sys.path[:0] = ["bench", "tests", "tests/jobs"]
import bench_embed as B
from sdclip.conventions.presets import Options
from sdclip.jobs.encode import CaptionEncoder
from sdclip.jobs.plan import JobSpec, scan
from sdclip.jobs.readers import open_source
family, preset, captions, models = sys.argv[1:5]
enc = CaptionEncoder(JobSpec(model=str(B.family_model(family, Path(models))), captions=captions, out="",
                             options=asdict(Options.preset(preset))))
real = type(enc.cond).prepare
if "spans" in real.__code__.co_varnames:
    enc.cond.prepare = lambda text, **_: real(enc.cond, text, spans=False)
source, out = open_source(captions), Path(tempfile.mkdtemp())
best = float("inf")
for _ in range(2):
    t = time.process_time()
    result = scan(source, enc.check, enc.slots, 256, out)
    best = min(best, time.process_time() - t)
print(best / result.rows * 1e6)
'''


def tree_of(commit: str, into: Path) -> Path:
    """`src/` of `commit`, unpacked under `into`."""
    data = subprocess.run(["git", "archive", commit, "src"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("families", nargs="+")
    p.add_argument("--before", required=True, help="the commit to compare with")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preset", default="diffusers")
    p.add_argument("--captions", help="a caption file (default: bench_embed.captions(2000))")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    captions = args.captions
    if captions is None:
        sys.path.insert(0, str(ROOT / "bench"))
        import bench_embed

        captions = str(work / "captions.txt")
        Path(captions).write_text("".join(c + "\n" for c in bench_embed.captions(2000)), encoding="utf-8")
    trees = {"before": str(tree_of(args.before, work / "before")), "after": str(ROOT / "src")}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for family in args.families:
            for label, src in trees.items():
                env = {**os.environ, "PYTHONPATH": src}
                run = subprocess.run([sys.executable, "-c", ONE, family, args.preset, captions, str(work / "models")],
                                     cwd=ROOT, env=env, capture_output=True, text=True)
                if run.returncode:
                    sys.exit(run.stderr[-2000:])
                times.setdefault((family, label), []).append(float(run.stdout.split()[-1]))
    print(f"load {os.getloadavg()[0]:.1f}, preset {args.preset}, best of {args.repeats}")
    for family in args.families:
        before, after = min(times[family, "before"]), min(times[family, "after"])
        print(f"{family}: {before:.0f} -> {after:.0f} us a caption ({after / before:.2f})")


if __name__ == "__main__":
    main()
