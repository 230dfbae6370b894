"""scripts/setup-tests.sh gets torch's CPU build: from PyTorch's CPU index on a stock machine (PyPI's Linux
torch is the multi-GB CUDA build), from pip's own configured source where there is one (a mirror, a wheel
folder: CI and air-gapped hosts reach only that). Tested without network: the choice itself (a shell
function, with pip's real `config list` under a controlled configuration), and the setup script run against
a stand-in `python` that records the pip commands it is given."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No PIP_* variables, no pip config files (PIP_CONFIG_FILE=/dev/null: pip then reads none at all)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "SDCLIP_"))}
    env.update({"PIP_CONFIG_FILE": os.devnull, "HOME": str(tmp_path), "PYTHON": sys.executable, **extra})
    return env


def index_args(env: dict[str, str]) -> list[str]:
    run = subprocess.run(["bash", "-c", ". scripts/torch-index.sh && torch_index_args"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


def test_a_stock_machine_gets_the_cpu_index(tmp_path):
    assert index_args(clean_env(tmp_path)) == ["--index-url", CPU_INDEX]


@pytest.mark.parametrize("variable", ["PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"])
def test_a_configured_source_is_kept(tmp_path, variable):
    assert index_args(clean_env(tmp_path, **{variable: "https://mirror.invalid/simple"})) == []


def test_a_config_file_source_is_kept(tmp_path):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nfind-links = /opt/wheels\n")
    assert index_args(clean_env(tmp_path, PIP_CONFIG_FILE=str(conf))) == []
    conf.write_text("[global]\ntimeout = 60\n")  # configuration that names no source
    assert index_args(clean_env(tmp_path, PIP_CONFIG_FILE=str(conf))) == ["--index-url", CPU_INDEX]


def test_the_override_wins(tmp_path):
    env = clean_env(tmp_path, SDCLIP_TORCH_INDEX="https://example.invalid/whl/cu126")
    assert index_args(env) == ["--index-url", "https://example.invalid/whl/cu126"]
    assert index_args(clean_env(tmp_path, SDCLIP_TORCH_INDEX="")) == []


FAKE_PYTHON = """#!/usr/bin/env bash
# records its arguments; `-m pip config list` prints $FAKE_PIP_CONFIG; `-m venv DIR` makes DIR/bin/python this
echo "$*" >> "$FAKE_LOG"
if [ "$1 $2 $3 $4" = "-m pip config list" ]; then printf '%s' "${FAKE_PIP_CONFIG:-}"; exit 0; fi
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && ln -sf "$0" "$3/bin/python"; fi
exit 0
"""


@pytest.mark.parametrize("pip_config, want_index", [("", True), ("global.find-links='/opt/wheels'\n", False)])
def test_setup_installs_torch_from_the_chosen_source(tmp_path, pip_config, want_index):
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "scripts", checkout / "scripts")
    (checkout / ".side" / "hf4" / "transformers").mkdir(parents=True)  # as if already installed
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "log"
    env = clean_env(tmp_path, FAKE_LOG=str(log), FAKE_PIP_CONFIG=pip_config, PATH=f"{bin_dir}:{os.environ['PATH']}")
    env.pop("PYTHON")
    run = subprocess.run(["bash", str(checkout / "scripts" / "setup-tests.sh")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    torch_line = next(line for line in log.read_text().splitlines() if "torch==" in line)
    assert (f"--index-url {CPU_INDEX}" in torch_line) == want_index, torch_line
    assert "-c scripts/test-constraints.txt" in torch_line
