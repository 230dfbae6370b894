#!/usr/bin/env bash
# Installs sdclip with everything its test suite compares against. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip install -q --disable-pip-version-check -c scripts/test-constraints.txt"
# the CPU build of torch first: PyPI's would be the multi-GB CUDA build (scripts/torch-index.sh says where from)
. scripts/torch-index.sh
TORCH_INDEX=$(torch_index_args | tr '\n' ' ')  # words without spaces: split on purpose below
$PIP $TORCH_INDEX "torch==2.13.0"
$PIP -e ".[torch,serve,ray,attention,llm,test]"
# open_clip's tokenizer is the reference for the "openclip" normalisation; its package import needs
# torchvision (which breaks beside this torch), so it is installed without dependencies and its
# tokenizer module loaded on its own
$PIP --no-deps "open_clip_torch>=2.20"
# transformers 4.x's Python CLIPTokenizer is the reference for "hf-slow" (transformers 5 has none):
# it lives in a side folder that only the tests' subprocess puts on its path
if [ ! -d .side/hf4/transformers ]; then
  python -m pip install -q --disable-pip-version-check --no-deps --target .side/hf4 \
    "transformers==4.57.6" "tokenizers==0.22.2" "huggingface_hub==0.36.2"
fi
# the torch-free stages (syntax, tokenizer, layout, prepare, conventions, inspect) are also tested in an
# environment without torch, as `pip install sdclip` users have it: a venv with the core install only, plus
# pytest and the torch-free oracles (tests/test_torch_free.py runs them there)
if [ ! -x .venv-notorch/bin/python ]; then
  python -m venv .venv-notorch
fi
.venv-notorch/bin/python -m pip install -q --disable-pip-version-check -c scripts/test-constraints.txt \
  -e . pytest hypothesis "transformers" "starlette>=0.37" "httpx>=0.27"
# the page's browser test drives Debian's chromium (CI installs it with apt-get; see .ci/run)
command -v chromium >/dev/null || echo "note: no chromium on PATH: the browser test of sdclip serve will be skipped" >&2
