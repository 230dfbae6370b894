"""The torch-free stages (syntax, tokenizer, layout, prepare, conventions, `inspect`, `tokenize`) work where
torch is not installed — as `pip install sdclip` users have them. Their tests run again in `.venv-notorch`
(a venv with the core install only, built by scripts/setup-tests.sh), where `import torch` fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = ROOT / ".venv-notorch" / "bin" / "python"
#: the test files of the torch-free stages (each imports neither torch nor a module that does)
TORCH_FREE_TESTS = (
    "tests/syntax/test_syntax_a1111.py",
    "tests/syntax/test_syntax_comfy.py",
    "tests/syntax/test_syntax_compel.py",
    "tests/syntax/test_syntax_fuzz.py",
    "tests/syntax/test_fuzz_prompts.py",
    "tests/tokenizer/test_tokenizer.py",
    "tests/tokenizer/test_token_normalization.py",
    "tests/layout/test_layout.py",
    "tests/conventions/test_presets.py",
    "tests/conventions/test_clip_skip.py",
    "tests/prepare/test_prepare.py",
    "tests/cli/test_cli_inspect.py",
)
#: modules a torch-free user imports
TORCH_FREE_MODULES = ("sdclip.syntax", "sdclip.tokenizer", "sdclip.layout", "sdclip.prepare", "sdclip.describe",
                      "sdclip.conventions.presets", "sdclip.cli.main", "sdclip.serve.app")


def test_torch_free_modules_do_not_import_torch() -> None:
    code = f"import sys\nfor m in {TORCH_FREE_MODULES!r}: __import__(m)\nassert 'torch' not in sys.modules, 'torch imported'"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr


@pytest.mark.slow
def test_torch_free_stages_pass_without_torch() -> None:
    if not VENV_PYTHON.exists():
        pytest.skip("no .venv-notorch: run scripts/setup-tests.sh")
    probe = subprocess.run([str(VENV_PYTHON), "-c", "import torch"], capture_output=True)
    assert probe.returncode != 0, ".venv-notorch must not have torch"
    run = subprocess.run([str(VENV_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", *TORCH_FREE_TESTS],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
