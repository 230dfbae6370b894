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
- attention_outputs: `sdclip attention`'s output-folder writer on random folder states (user files at result
  names and under words/, edited earlier outputs, forged records naming ../victim or absolute paths, links):
  user files lost (goal 0), one-line refusals, half-written results, temporary folders left;
- enospc: `sdclip embed` in-process with ENOSPC at os.pwrite on a random shard, then re-run: one-line
  refusals and every caption exactly once after the re-run (goal: N of N);
- api_fields: /api/inspect, /api/view and /api/encode (no model) with malformed values in every field
  (5,000-digit ints, NaN/Infinity/1e400, 5,000-deep nesting, lone surrogates, wrong types): 500s (goal 0)
  and 400s that name the field. Each of these three is bounded to under a minute.
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


# ---- bounded sections for the output-folder rule, a full disk and the HTTP fields (issue 24) ---------------


def _tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every regular file under root (links not followed)."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _tiny_maps():  # noqa: ANN202
    import torch
    from PIL import Image

    from sdclip.attention.maps import AttentionMaps
    from sdclip.attention.slots import Slot

    slots = (Slot(0, "<|startoftext|>", "<|startoftext|>", "", None, 0, 1.0, "BOS"),
             Slot(1, "red", "red</w>", "red", (2, 5), 0, 1.0, "token"),
             Slot(2, "fox", "fox</w>", "fox", (6, 9), 0, 1.2, "token"),
             Slot(3, "<|endoftext|>", "<|endoftext|>", "", None, 0, 1.0, "EOS"))
    maps = AttentionMaps(torch.rand(len(slots), 8, 8, generator=torch.Generator().manual_seed(0)), slots, (64, 64))
    return maps, Image.new("RGB", (64, 64), (90, 140, 60))


#: folder states for attention_outputs: what a user (or a forged record) leaves before the command writes
OUTPUT_STATES = ("new", "empty", "user-at-result-name", "user-under-words", "edited-earlier-output", "earlier-output",
                 "other-user-files", "record-../victim", "record-absolute-victim", "record-words/../../victim",
                 "garbage-record", "foreign-tool-record", "words-is-a-link", "result-name-is-a-link")


def attention_outputs(runs: int = 300, seconds: float = 45.0, seed: int = 0) -> dict:
    """sdclip.attention.output.write_result called directly (no pipeline) on random folder states; user files
    (victims outside DIR included) hashed before and after. A failure: a traceback, a user file lost or
    changed, a refusal on more than one line, a result whose record does not match its files, a temp left."""
    import hashlib

    from safetensors.torch import load_file

    from sdclip.attention.output import FILES, RECORD, TMP_PREFIX, write_result
    from sdclip.outputs import OutputError

    maps, image = _tiny_maps()
    rng = random.Random(seed)
    counts = {"runs": 0, "written": 0, "refused": 0, "refusals_one_line": 0, "tracebacks": 0, "user_files_lost": 0,
              "half_written": 0, "temps_left": 0}
    per_state: dict[str, dict[str, int]] = {s: {"runs": 0, "written": 0, "refused": 0} for s in OUTPUT_STATES}
    examples: list[str] = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(runs):
            if time.monotonic() - start > seconds:
                break
            root = Path(tmp) / str(k)
            out = root / "out"
            root.mkdir()
            (root / "victim").write_bytes(b"the user's file %d" % k)
            state = rng.choice(OUTPUT_STATES)
            if state != "new":
                out.mkdir()
            if state in ("edited-earlier-output", "earlier-output") or state.startswith(("record-", "garbage", "foreign")):
                write_result(out, maps, image, {"prompt": "a red fox"})
            if state == "user-at-result-name":
                (out / rng.choice(FILES)).write_bytes(b"user")
            elif state == "user-under-words":
                (out / "words").mkdir(exist_ok=True)
                (out / "words" / rng.choice(("00_red.png", "notes.txt", "01_fox.png"))).write_bytes(b"user")
            elif state == "edited-earlier-output":
                rel = rng.choice(sorted(r for r in _tree(out) if r != RECORD))
                (out / rel).write_bytes((out / rel).read_bytes() + b"edited")
            elif state == "other-user-files":
                (out / "notes.txt").write_text("mine")
                (out / "sub").mkdir()
                (out / "sub" / "image.png").write_bytes(b"mine")
            elif state.startswith("record-"):
                target = {"record-../victim": "../victim", "record-absolute-victim": str(root / "victim"),
                          "record-words/../../victim": "words/../../victim"}[state]
                doc = json.loads((out / RECORD).read_text())
                doc["files"][target] = [hashlib.sha256((root / "victim").read_bytes()).hexdigest()]
                (out / RECORD).write_text(json.dumps(doc))
            elif state == "garbage-record":
                (out / RECORD).write_bytes(rng.choice((b"{", b"[]", b"\xff\xfe", b'{"tool": "sdclip attention"}')))
            elif state == "foreign-tool-record":
                (out / RECORD).write_text(json.dumps({"tool": "other", "files": {}}))
            elif state == "words-is-a-link":
                (root / "userwords").mkdir()
                (root / "userwords" / "00_red.png").write_bytes(b"user")
                (out / "words").symlink_to(root / "userwords")
            elif state == "result-name-is-a-link":
                (out / rng.choice(FILES)).symlink_to(root / "victim")
            # the user's files: everything now under root except what an earlier run wrote and nobody changed
            try:  # an earlier run's files that its record names with their current hash: the command's own
                ours = json.loads((out / RECORD).read_text())["files"]
                ours = ours if isinstance(ours, dict) else {}
            except (OSError, ValueError, KeyError, TypeError):
                ours = {}
            user = {r: h for r, h in _tree(root).items()
                    if not (r.startswith("out/") and h in ours.get(r[4:], ())) and r != f"out/{RECORD}"}
            per_state[state]["runs"] += 1
            counts["runs"] += 1
            try:
                write_result(out, maps, image, {"prompt": "a red fox"})
                outcome = "written"
            except OutputError as exc:
                outcome = "refused"
                counts["refusals_one_line"] += int("\n" not in str(exc) and len(str(exc)) < 600)
            except Exception as exc:  # noqa: BLE001 - what the campaign counts
                outcome = "traceback"
                counts["tracebacks"] += 1
                examples.append(f"{state}: {type(exc).__name__}: {exc}"[:200])
            if outcome != "traceback":
                counts[outcome] += 1
                per_state[state][outcome] += 1
            after = _tree(root)
            lost = [r for r, h in user.items() if after.get(r) != h]
            counts["user_files_lost"] += len(lost)
            if lost:
                examples.append(f"{state}: lost {', '.join(lost)}")
            temps = [p.name for p in (*root.glob(f"{TMP_PREFIX}*.tmp"), *(out.glob(f"{TMP_PREFIX}*.tmp") if out.is_dir() else ()))]
            counts["temps_left"] += len(temps)
            if outcome == "written":
                try:
                    record = json.loads((out / RECORD).read_text())["files"]
                    whole = set(FILES) <= set(record) and all(after.get(f"out/{r}") in h for r, h in record.items())
                    whole = whole and load_file(out / "maps.safetensors")["maps"].shape == maps.maps.shape
                except Exception:  # noqa: BLE001 - a half-written result
                    whole = False
                counts["half_written"] += int(not whole)
    counts["seconds"] = round(time.monotonic() - start, 1)
    counts["failures"] = (counts["tracebacks"] + counts["user_files_lost"] + counts["half_written"] + counts["temps_left"]
                          + counts["refused"] - counts["refusals_one_line"])
    return {**counts, "per_state": per_state, "examples": examples[:10]}


def enospc(runs: int = 40, seconds: float = 50.0, seed: int = 0) -> dict:
    """`sdclip embed` in-process with ENOSPC raised by os.pwrite on a random shard, then the same command
    without it: the failed run must be one line (exit 2) with only whole shards left, the re-run must hold
    every caption exactly once and pass --verify."""
    import contextlib
    import errno
    import io
    import os

    from safetensors.torch import load_file
    from tiny_models import tiny_family, write_layout

    from sdclip.cli.main import main as cli

    rng = random.Random(seed)
    counts = {"runs": 0, "one_line_refusals": 0, "tracebacks": 0, "other_exits": 0, "half_written": 0,
              "complete_after_rerun": 0, "verify_ok": 0}
    examples: list[str] = []
    real = os.pwrite
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = write_layout("single.safetensors", tiny_family("sd1"), root / "model")
        captions = [f"{p}, take {k}" for k, p in enumerate(PROMPTS[:24])]
        caps = root / "caps.txt"
        caps.write_text("".join(c + "\n" for c in captions), encoding="utf-8")
        shards = (len(captions) + 3) // 4
        for k in range(runs):
            if time.monotonic() - start > seconds:
                break
            out = root / f"out{k}"
            bad = f".shard-{rng.randrange(shards):05d}.safetensors."

            def full_disk(fd, data, offset, bad=bad):  # noqa: ANN001, ANN202
                if bad in os.readlink(f"/proc/self/fd/{fd}"):
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real(fd, data, offset)

            argv = ["embed", "--model", str(model), "--captions", str(caps), "--out", str(out), "--shard-size", "4"]
            err = io.StringIO()
            counts["runs"] += 1
            os.pwrite = full_disk
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    rc = cli(argv)
            except BaseException as exc:  # noqa: BLE001 - what the campaign counts
                rc = None
                examples.append(f"{bad}: {type(exc).__name__}: {exc}"[:200])
            finally:
                os.pwrite = real
            text = err.getvalue()
            if rc is None or "Traceback" in text:
                counts["tracebacks"] += 1
            elif rc == 2 and text.count("\n") == 1 and "disk full" in text:
                counts["one_line_refusals"] += 1
            else:
                counts["other_exits"] += 1
                examples.append(f"{bad}: exit {rc}: {text[-200:]!r}")
            left = sorted(out.glob("shard-*.safetensors")) if out.is_dir() else []
            temps = [p for p in out.glob(".*.tmp")] if out.is_dir() else []
            try:
                broken = sum(load_file(p)["index"].numel() != 4 for p in left)
            except Exception:  # noqa: BLE001 - a half-written shard
                broken = 1
            counts["half_written"] += int(bool(broken or temps))
            with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                rc = cli(argv)
                ok = cli(["embed", "--verify", str(out)]) == 0
            if rc == 0:
                index = sorted(int(i) for p in sorted(out.glob("shard-*.safetensors")) for i in load_file(p)["index"])
                counts["complete_after_rerun"] += int(index == list(range(len(captions))))
            counts["verify_ok"] += int(ok)
    counts["seconds"] = round(time.monotonic() - start, 1)
    counts["failures"] = counts["tracebacks"] + counts["other_exits"] + counts["half_written"] + (
        counts["runs"] - counts["complete_after_rerun"])
    return {**counts, "examples": examples[:10]}


def _bad_values(rng: random.Random) -> list[tuple[str, bytes]]:
    huge = "9" * 5000
    return [
        ("5000-digit int", huge.encode()), ("-5000-digit int", b"-" + huge.encode()), ("NaN", b"NaN"),
        ("Infinity", b"Infinity"), ("-Infinity", b"-Infinity"), ("1e400", b"1e400"), ("float", b"2.5"),
        ("nested list 5000", b"[" * 5000 + b"]" * 5000), ("nested object 5000", b'{"a":' * 5000 + b"1" + b"}" * 5000),
        ("lone surrogate", rng.choice((b'"\\ud800"', b'"a \\udfff b"', b'"\\ud83d"'))), ("bool", b"true"),
        ("list", b'["x", 1]'), ("object", b'{"x": 1}'), ("string", b'"x"'), ("negative", b"-1"),
        ("5000-digit string", b'"' + huge.encode() + b'"'), ("surrogate key", b'{"\\udfff": 1}'),
    ]


def api_fields(requests: int = 5000, seconds: float = 45.0, seed: int = 0) -> dict:
    """/api/inspect and /api/view (every field) and /api/encode without a model, through starlette's TestClient:
    random malformed values; counts 500s (goal 0), 400s and the 400s whose error names the field."""
    from starlette.testclient import TestClient

    from sdclip.serve import create_app
    from sdclip.serve.api import VIEW_FIELDS

    rng = random.Random(seed)
    counts = {"requests": 0, "status_500": 0, "status_400": 0, "status_400_naming_field": 0, "other_status": {},
              "multi_line_errors": 0, "slowest_s": 0.0}
    unnamed: dict[str, int] = {}
    accepted: dict[str, int] = {}
    start = time.monotonic()
    with TestClient(create_app(), base_url="http://localhost", raise_server_exceptions=False) as client:
        while counts["requests"] < requests and time.monotonic() - start < seconds:
            path = rng.choice(("/api/inspect", "/api/inspect", "/api/view", "/api/encode"))
            kind, value = rng.choice(_bad_values(rng))
            fields = ("prompt", "negative") if path == "/api/encode" else VIEW_FIELDS
            field = rng.choice(fields)
            body = {"prompt": b'"a red fox"'} if field != "prompt" else {}
            body[field] = value
            raw = b"{" + b", ".join(b'"%s": %s' % (k.encode(), v) for k, v in body.items()) + b"}"
            t0 = time.monotonic()
            r = client.post(path, content=raw, headers={"Content-Type": "application/json"})
            counts["slowest_s"] = max(counts["slowest_s"], round(time.monotonic() - t0, 3))
            counts["requests"] += 1
            if r.status_code == 500:
                counts["status_500"] += 1
            elif r.status_code == 400:
                counts["status_400"] += 1
                error = r.json().get("error", "")
                counts["multi_line_errors"] += int("\n" in error)
                if field in error or ("nested" in kind and "nested" in error):
                    counts["status_400_naming_field"] += 1
                else:
                    unnamed[f"{field} ← {kind}"] = unnamed.get(f"{field} ← {kind}", 0) + 1
            else:
                key = f"{path} {r.status_code}"
                counts["other_status"][key] = counts["other_status"].get(key, 0) + 1
                if r.status_code == 200:  # a value the field accepts (a string prompt, a small int)
                    accepted[f"{field} ← {kind}"] = accepted.get(f"{field} ← {kind}", 0) + 1
    counts["seconds"] = round(time.monotonic() - start, 1)
    return {**counts, "unnamed_400s": dict(sorted(unnamed.items(), key=lambda kv: -kv[1])[:15]),
            "accepted_200s": dict(sorted(accepted.items(), key=lambda kv: -kv[1])[:15])}


SECTIONS = ("fuzz", "hostile", "threads", "kill9", "layouts", "inspect", "attention_outputs", "enospc", "api_fields")


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
    if "attention_outputs" in only:
        report["attention_outputs"] = attention_outputs()
    if "enospc" in only:
        report["enospc"] = enospc()
    if "api_fields" in only:
        report["api_fields"] = api_fields()
    write_json("reliability", report)
    print(json.dumps({k: v for k, v in report.items() if k in only and k not in ("fuzz", "hostile")}, indent=1))


if __name__ == "__main__":
    main()
