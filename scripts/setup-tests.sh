#!/usr/bin/env bash
# Installs sdclip with everything its test suite compares against. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip install -q --disable-pip-version-check -c scripts/test-constraints.txt"
# the CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build
$PIP "torch==2.13.0"
$PIP -e ".[torch,serve,ray,attention,test]"
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
