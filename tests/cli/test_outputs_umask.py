"""Every output gets the mode the umask gives a new file (issue 19.11: shards were 0600, manifest.json 0644).

safetensors' `save_file` replaces the path it is given with a 0600 file, so `atomic_path` sets the mode after
the writer is done; checked for the bare writer, `encode` and `embed` end to end under umasks 022 and 027."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdclip.cli.main import main
from sdclip.outputs import atomic_path, current_umask
from tiny_models import tiny_family, write_layout

MASKS = [0o022, 0o027]


@pytest.fixture
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_layout("single.safetensors", tiny_family("sd1"), tmp_path_factory.mktemp("m"))


def _modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777 for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("umask", MASKS, indirect=True)
def test_current_umask_is_read_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask


@pytest.mark.parametrize("umask", MASKS, indirect=True)
def test_atomic_path_with_a_writer_that_replaces_the_file(tmp_path, umask):
    with atomic_path(tmp_path / "t.safetensors") as tmp:
        save_file({"a": torch.zeros(2)}, str(tmp))  # creates its own 0600 file at `tmp`
    with atomic_path(tmp_path / "m.json") as tmp:
        tmp.write_bytes(b"{}")
    assert _modes(tmp_path) == {"t.safetensors": 0o666 & ~umask, "m.json": 0o666 & ~umask}


@pytest.mark.parametrize("umask", MASKS, indirect=True)
def test_encode_and_embed_outputs_follow_the_umask(model, tmp_path, umask):
    out = tmp_path / "enc" / "fox.safetensors"
    assert main(["encode", "--model", str(model), "--prompt", "a fox", "--out", str(out)]) == 0
    assert _modes(out.parent) == {"fox.safetensors": 0o666 & ~umask}
    caps = tmp_path / "caps.txt"
    caps.write_text("a fox\na cat\na red bird\n")
    job = tmp_path / "job"
    assert main(["embed", "--model", str(model), "--captions", str(caps), "--out", str(job), "--shard-size", "2"]) == 0
    modes = _modes(job)
    assert any(name.startswith("shard-") for name in modes) and "manifest.json" in modes
    assert set(modes.values()) == {0o666 & ~umask}, {k: oct(v) for k, v in modes.items()}
