"""`inspect --json` counts a T5-only family's own sequence (Chroma, Wan, PixArt-Σ, AuraFlow): `capacity` and
`counter` are the T5 role's n / max_sequence_length, never CLIP's 75 (issue 20 loose end). CLIP families and
SD3 / Flux keep A1111's n/75. The oracle for the count is transformers' own T5 tokenizer over the same folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sdclip.conventions.family import FAMILIES, T5_ONLY

pytestmark = pytest.mark.slow  # trains the tiny T5 tokenizer (~10 s)


@pytest.fixture(scope="module")
def t5_dir():
    pytest.importorskip("sentencepiece")
    pytest.importorskip("torch")
    from tiny_pipelines import t5_tokenizer_dir

    return t5_tokenizer_dir()


def inspect_json(*argv: str) -> dict:
    res = subprocess.run([sys.executable, "-m", "sdclip", "inspect", "--json", *argv], capture_output=True,
                         timeout=120, env={**os.environ, "COLUMNS": "300"})
    assert res.returncode == 0, res.stderr.decode()
    return json.loads(res.stdout)


def n_tokens(folder, text: str) -> int:
    from transformers import T5TokenizerFast

    return len(T5TokenizerFast.from_pretrained(str(folder))(text)["input_ids"])  # `</s>` included


@pytest.mark.parametrize("family", T5_ONLY)
def test_t5_only_family_counts_its_t5_sequence(t5_dir, family):
    text = "a red fox in the snow"
    limit = FAMILIES[family].roles[0].length
    out = inspect_json("--family", family, "--t5-tokenizer", str(t5_dir), text)
    n = n_tokens(t5_dir, text)
    assert out["counter"] == {"count": n, "capacity": limit}
    assert out["capacity"] == limit and out["parts"][0]["capacity"] == limit
    assert out["t5"]["count"] == n and out["t5"]["limit"] == limit  # the T5 entry agrees
    assert {"rows", "tokens", "dropped", "parts", "warnings"} <= set(out)  # the contract's fields stay


def test_and_parts_of_a_t5_only_family(t5_dir):
    out = inspect_json("--family", "auraflow", "--t5-tokenizer", str(t5_dir), "a red fox AND a very small blue house")
    counts = [n_tokens(t5_dir, t) for t in ("a red fox", "a very small blue house")]
    assert out["counter"] == {"count": max(counts), "capacity": 256}  # the largest part, as A1111's counter
    assert out["capacity"] == 2 * 256 and [p["capacity"] for p in out["parts"]] == [256, 256]


def test_families_with_clip_rows_keep_the_n_75_counter(t5_dir):
    out = inspect_json("--family", "sd3", "--t5-tokenizer", str(t5_dir), "a red fox")
    assert out["capacity"] == 75 and out["counter"] == {"count": 3, "capacity": 75}
    assert out["t5"]["count"] >= 3  # its own entry, beside the CLIP counter


def test_an_llm_family_counts_its_prompt_over_max_sequence_length(tmp_path):
    """The LLM lane's own count (the prompt's tokens, the template not counted) over its limit, as its
    `qwen25vl` entry says: never CLIP's 75."""
    pytest.importorskip("torch")
    import warnings

    from tiny_llm import tiny_folder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = tiny_folder(tmp_path, "qwen-image")
    out = inspect_json("--family", "qwen-image", "--llm-tokenizer", str(folder), "a red fox")
    entry = out["qwen25vl"]
    assert out["counter"] == {"count": entry["count"], "capacity": 1024} and entry["count"] >= 3
    assert out["capacity"] == 1024 and out["parts"][0]["capacity"] == 1024


def test_terminal_and_part_headers_of_a_t5_only_family_count_its_t5_line(t5_dir):
    """The terminal view's AND part headings say the T5 line's n/limit (the JSON's part capacity), not CLIP's n/75."""
    prompt = "a red fox AND a very small blue house"
    res = subprocess.run([sys.executable, "-m", "sdclip", "inspect", "--family", "wan", "--t5-tokenizer", str(t5_dir),
                          prompt], capture_output=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
    assert res.returncode == 0, res.stderr.decode()
    headings = [line for line in res.stdout.decode().splitlines() if "part " in line and "tokens" in line]
    limit = FAMILIES["wan"].roles[0].length
    wanted = [f"{n_tokens(t5_dir, t)}/{limit} tokens" for t in ("a red fox", "a very small blue house")]
    assert len(headings) == 2 and all(w in h for w, h in zip(wanted, headings)), headings
