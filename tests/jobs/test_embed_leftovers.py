"""`sdclip embed`'s leftovers from the reliability campaign (issue 21, "Bad input"): two jobs in threads of one
process, inputs that hold no caption, the Ray engine's write error, `--verify` beside a running job, a Parquet
file damaged past its first row group. Each case fails on the code before its fix; real files, real
subprocesses, the tests' tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sdclip.jobs.formats import owned
from sdclip.jobs.formats.owned import JOURNAL
from tiny_models import tiny_family, write_layout
from embed_rows import read_rows
from test_embed_campaign import _job_running, embed, env, image_folder, one_line


@pytest.fixture(scope="module")
def sd1(tmp_path_factory) -> Path:
    return write_layout("single.safetensors", tiny_family("sd1"), tmp_path_factory.mktemp("models") / "sd1")


# ---- ownership caches shared by two jobs in threads of one process ------------------------------------------

def _journal(root: Path) -> list[str]:
    return sorted(json.loads(line) for line in (root / JOURNAL).read_text().splitlines())


def _one_job(out: Path, root: Path, name: str, rounds: int, errors: list) -> None:
    """What one job's writer does to the caches: a new job forgets `out`, then claims its files, some of them
    already on disk (a re-run's)."""
    try:
        for r in range(rounds):
            owned.forget(out)
            for i in range(12):
                rel = f"{name}/{r:03d}-{i:02d}.npz"
                owned.claim(out, root, rel)
                if i % 3 == 0:  # written: the next claim of it must find it sdclip's
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    (root / rel).write_bytes(b"x")
                    owned.claim(out, root, rel)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def _jobs(tmp_path: Path, threaded: bool) -> dict[str, list[str]]:
    """Four jobs: two on one image folder (different --out), two on another; their journals afterwards."""
    roots = [tmp_path / "imgs-a", tmp_path / "imgs-b"]
    plan = [(tmp_path / f"out{j}", roots[j // 2], f"job{j}") for j in range(4)]
    errors: list = []
    if threaded:
        old = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can: the races show
        try:
            threads = [threading.Thread(target=_one_job, args=(*p, 40, errors)) for p in plan]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            sys.setswitchinterval(old)
    else:
        for p in plan:
            _one_job(*p, 40, errors)
    assert not errors, errors[0]
    for out, root, name in plan:  # every file written is known to be sdclip's, by a fresh job too
        owned.forget(out)
        for path in sorted((root / name).iterdir()):
            owned.claim(out, root, path.relative_to(root).as_posix())
    return {root.name: _journal(root) for root in roots}


def test_two_jobs_in_threads_share_the_ownership_caches_safely(tmp_path):
    """A library caller runs jobs in threads of one process. Old code: the caches were module dicts changed without
    a lock (`forget` iterated one while another job's writer added to it: RuntimeError). Now: the journals equal
    a serial run's, every path once, none lost."""
    serial = _jobs(tmp_path / "serial", threaded=False)
    threaded = _jobs(tmp_path / "threaded", threaded=True)
    assert threaded == serial
    for lines in threaded.values():
        assert len(lines) == len(set(lines)) == 2 * 40 * 12


# ---- --verify beside a running job -----------------------------------------------------------------------

def test_verify_of_a_folder_a_job_is_writing_says_so_and_leaves_the_job_alone(tmp_path, sd1, capsys):
    """Old code: "… captions are in no shard …: the job is not finished; re-run it to resume" (a second job
    there would be refused). Now: one line saying a job is running there, exit 2; the job finishes undisturbed
    and the same --verify then passes."""
    job, _, out = _job_running(tmp_path, sd1, "shard-00000.safetensors")
    capsys.readouterr()
    assert embed("--verify", out) == 2
    assert one_line(capsys.readouterr().err) == (f"sdclip: {out}: an `sdclip embed` job is running in this folder: "
                                                  "--verify it once that job has ended\n")
    _, stderr = job.communicate(timeout=180)
    assert job.returncode == 0, stderr
    assert embed("--verify", out) == 0 and read_rows(out)["index"].tolist() == list(range(300))
    assert not (out / ".lock").exists()
    (out / ".lock").write_bytes(b"")  # a killed job's lock file, held by no one: verified as any folder
    assert embed("--verify", out) == 0


# ---- a Parquet file damaged past its first row group ----------------------------------------------------------

def _damage_row_group(path: Path, group: int) -> bytes:
    """Overwrite the first bytes of row group `group`'s caption column (its page header) with 0xff; returns the
    file's bytes before."""
    import pyarrow.parquet as pq

    chunk = pq.ParquetFile(path).metadata.row_group(group).column(0)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    before = path.read_bytes()
    path.write_bytes(before[:start] + b"\xff" * 8 + before[start + 8:])
    return before


def test_a_parquet_row_group_past_the_first_that_cannot_be_read_is_one_line_naming_its_rows(tmp_path, sd1, capsys):
    """Three row groups of ten captions, the second damaged (the first reads). Old code: one line naming the
    file and "row group 2 of 3", not which captions. Now the rows too; nothing written on a first run; a
    finished folder keeps every shard (and --verify says the same line) until the file is whole again."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "caps.parquet"
    pq.write_table(pa.table({"caption": [f"caption {i}, a red fox" for i in range(30)]}), path, row_group_size=10)
    args = ["--model", sd1, "--captions", path, "--shard-size", "5"]
    assert embed(*args, "--out", tmp_path / "done") == 0
    kept = {p.name: p.read_bytes() for p in (tmp_path / "done").iterdir()}
    whole = _damage_row_group(path, 1)
    assert pq.ParquetFile(path).read_row_group(0).num_rows == 10  # the first group still reads
    capsys.readouterr()
    assert embed(*args, "--out", tmp_path / "new") == 2
    said = one_line(capsys.readouterr().err)  # pyarrow's reason in the brackets, printable
    assert said.startswith(f"sdclip: {path}: row group 2 of 3 (rows 11–20) is not readable Parquet (")
    assert said.endswith("); the rows before it read\n") and said[:-1].isprintable()
    assert not (tmp_path / "new").exists()
    for again in (args + ["--out", tmp_path / "done"], ["--verify", tmp_path / "done"]):
        assert embed(*again) == 2
        assert one_line(capsys.readouterr().err) == said
    assert {p.name: p.read_bytes() for p in (tmp_path / "done").iterdir()} == kept
    path.write_bytes(whole)
    assert embed(*args, "--out", tmp_path / "done") == 0 and embed("--verify", tmp_path / "done") == 0
    assert read_rows(tmp_path / "done")["index"].tolist() == list(range(30))


# ---- inputs that hold no caption --------------------------------------------------------------------------------

def _listing(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_image_folder_without_images_or_without_captions_is_one_line_saying_what_it_holds(tmp_path, sd1, capsys):
    """Old code: "0 of 0 caption(s)" and exit 0 for a folder of no image, and for images whose captions have
    another suffix (each image the empty caption, a warning apiece). Now one line: what was looked for, what
    was found; exit 2; --out not created, the folder untouched. An empty caption file is a caption."""
    none = tmp_path / "texts"
    for sub in ("sub", ".cache"):
        (none / sub).mkdir(parents=True)
    for rel in ("a.txt", "b.txt", "sub/c.json", ".cache/d.png"):  # a hidden folder is not walked
        (none / rel).write_text("x")
    wrong = tmp_path / "imgs"
    wrong.mkdir()
    for i in range(12):
        (wrong / f"i{i:02d}.png").write_bytes(b"not an image")
        (wrong / f"i{i:02d}.caption").write_text(f"a red fox {i}")
    before = _listing(wrong)
    capsys.readouterr()
    assert embed("--model", sd1, "--captions", none, "--out", tmp_path / "o1") == 2
    assert one_line(capsys.readouterr().err) == (
        f"sdclip: --captions {none}: no image (.png, .jpg, .jpeg, .webp, .bmp, .gif, .tif, .tiff, .avif, .jxl) "
        "in the folder or its subfolders (hidden folders skipped); found 2 .txt, 1 .json\n")
    for extra in ([], ["--caption-lines"], ["--format", "kohya"]):
        assert embed("--model", sd1, "--captions", wrong, "--out", tmp_path / "o2", *extra) == 2
        assert one_line(capsys.readouterr().err) == (f"sdclip: --captions {wrong}: 12 image(s), none with a .txt "
                                                      "caption file (--caption-extension); beside them: 12 .caption\n")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists() and _listing(wrong) == before
    assert embed("--model", sd1, "--captions", wrong, "--out", tmp_path / "o3", "--caption-extension", ".caption") == 0
    for p in wrong.glob("*.caption"):  # deliberately empty captions: encoded, as sd-scripts reads them
        p.with_suffix(".txt").write_bytes(b"")
    assert embed("--model", sd1, "--captions", wrong, "--out", tmp_path / "o4") == 0
    assert "warning" not in capsys.readouterr().err and len(read_rows(tmp_path / "o4")["index"]) == 12


def _empty_inputs(tmp_path: Path) -> dict[Path, str]:
    """Each kind of captions file holding no caption, and what the warning says it holds."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    inputs = {tmp_path / "e.txt": "an empty file (0 bytes)", tmp_path / "e.jsonl": "an empty file (0 bytes)",
              tmp_path / "e.csv": "a header line and no rows",
              tmp_path / "e.parquet": "a Parquet file of 0 rows (1 row group(s))"}
    for path in inputs:
        path.write_bytes(b"caption,source\n" if path.suffix == ".csv" else b"")
    pq.write_table(pa.table({"caption": pa.array([], pa.string())}), tmp_path / "e.parquet")
    return inputs


def test_a_captions_file_of_no_caption_is_a_finished_job_of_no_rows_with_one_warning(tmp_path, sd1, capsys):
    """A file is what the user named: empty, it is an empty dataset (a pipeline's filter kept nothing), not a
    mistake: exit 0, --verify passes, sdclip.dataset yields nothing, as before; old code said nothing at all.
    A file of blank lines is that many empty captions, encoded (caption dropout), with no warning."""
    import sdclip.dataset

    for k, (path, holds) in enumerate(_empty_inputs(tmp_path).items()):
        out = tmp_path / f"out{k}"
        capsys.readouterr()
        assert embed("--model", sd1, "--captions", path, "--out", out) == 0
        said = capsys.readouterr()
        assert one_line(said.err) == (f"sdclip: warning: --captions {path}: {holds}: no caption to encode; the job "
                                      "finishes with 0 rows\n")
        assert f"{out}: 0 of 0 caption(s)" in said.out
        assert embed("--verify", out) == 0 and list(sdclip.dataset.open(out)) == []
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n\n")
    capsys.readouterr()
    assert embed("--model", sd1, "--captions", blank, "--out", tmp_path / "blank") == 0
    assert capsys.readouterr().err == "" and read_rows(tmp_path / "blank")["index"].tolist() == [0, 1, 2]


def test_a_captions_file_emptied_under_a_finished_job_removes_nothing(tmp_path, sd1, capsys):
    """`> captions.txt` by mistake, then the same command. Old code: the edit removed every shard of the job
    (a finished job of 0 rows). Now one line, exit 2, every file kept; --overwrite empties the job on purpose."""
    caps = tmp_path / "caps.txt"
    caps.write_text("a red fox\na blue cat\na green owl\n")
    args = ["--model", sd1, "--captions", caps, "--out", tmp_path / "out", "--shard-size", "2"]
    assert embed(*args) == 0
    kept = _listing(tmp_path / "out")
    caps.write_bytes(b"")
    capsys.readouterr()
    assert embed(*args) == 2
    assert one_line(capsys.readouterr().err) == (
        f"sdclip: --captions {caps}: an empty file (0 bytes), where {tmp_path / 'out'} holds 2 shard(s) of it: "
        "nothing removed; pass --overwrite to empty the job, or choose another --out\n")
    assert _listing(tmp_path / "out") == kept
    assert embed(*args, "--overwrite") == 0 and not list((tmp_path / "out").glob("shard-*"))


# ---- the Ray engine's write error -----------------------------------------------------------------------------

def _trainer_file_in_the_way(images: Path) -> str:
    """What a worker meets at its first write: ai-toolkit's cache folder is a file (an OSError), or a trainer's
    own npz sits at kohya's name (sdclip's JobError). Returns the --format."""
    if images.name.startswith("ai-toolkit"):
        (images / "_t_e_cache").write_text("a file where the cache folder goes")
        return "ai-toolkit"
    (images / "i0002_te_outputs.npz").write_bytes(b"sd-scripts' own cache")
    return "kohya"


@pytest.mark.slow
def test_a_ray_workers_error_is_the_local_engines_line_naming_the_file(tmp_path):
    """Old code under Ray: Ray Data's traceback, twice (its UserCodeException wrapper does not carry the worker's
    OSError or JobError across processes; had it, a write error said "a shard" and a JobError gained Ray's
    retry advice). Now the local engine's very line, naming the file."""
    pytest.importorskip("ray")
    model = write_layout("single.safetensors", tiny_family("sdxl"), tmp_path / "sdxl")
    for case in ("ai-toolkit", "kohya"):
        said = {}
        for engine in ("local", "ray"):
            images = image_folder(tmp_path / f"{case}-{engine}", [f"a red fox number {i}" for i in range(4)])
            fmt = _trainer_file_in_the_way(images)
            run = subprocess.run([sys.executable, "-m", "sdclip", "embed", "--model", str(model), "--captions",
                                  str(images), "--out", str(tmp_path / f"out-{case}-{engine}"), "--format", fmt,
                                  "--engine", engine], env=env(), capture_output=True, text=True, timeout=400)
            assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
            lines = [line for line in run.stderr.splitlines() if "logging.cc" not in line]  # Ray's C++ core: one line
            assert len(lines) == 1 and lines[0].startswith("sdclip: "), run.stderr
            said[engine] = lines[0].replace(str(images), "IMAGES")
        assert said["ray"] == said["local"]
        assert said["ray"].startswith("sdclip: cannot write IMAGES/_t_e_cache/i0000_" if case == "ai-toolkit" else
                                      "sdclip: IMAGES/i0002_te_outputs.npz: a file of the trainer's name")
