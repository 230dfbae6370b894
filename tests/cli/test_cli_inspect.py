"""`sdclip inspect` and `sdclip tokenize`: the stable JSON contracts, the human view, and no torch needed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from clip_files import write_tokenizer

from sdclip.cli.main import main

REF_EXAMPLE = "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."
BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """transformers' own CLIPTokenizer over the same vocabulary: the oracle for ids."""
    from transformers import CLIPTokenizer

    folder = write_tokenizer(tmp_path_factory.mktemp("tok"))
    return CLIPTokenizer.from_pretrained(folder)


def run_json(capsys, *argv: str) -> dict:
    assert main(["inspect", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_reference_example_weights_and_ids(capsys, hf_tokenizer):
    out = run_json(capsys, REF_EXAMPLE)
    assert set(out) >= {"rows", "tokens", "dropped"}
    row = out["rows"][0]
    assert len(out["rows"]) == 1 and len(row["ids"]) == len(row["weights"]) == 77
    words = ["a", "house", "on", "a", "hill", ",", "sun", ",", "sky", "."]
    want_ids = [hf_tokenizer.convert_tokens_to_ids(w + "</w>") for w in words]
    want_w = [1.0, 1.573, 1.0, 1.1, 0.55, 1.1, 1.1, 1.1, 1.4641, 1.1]
    n = len(words)
    assert row["ids"][: n + 2] == [BOS, *want_ids, EOS]
    assert row["ids"][n + 2 :] == [EOS] * (77 - n - 2)  # SD1 pads with EOS
    assert row["weights"][1 : n + 1] == pytest.approx(want_w, abs=1e-6)
    assert row["weights"][0] == row["weights"][n + 1] == 1.0
    assert out["tokens"] == n and out["dropped"] == "" and out["capacity"] == 75


def test_ids_match_transformers_and_sd2_pads_with_zero(capsys, hf_tokenizer):
    text = "a photo of an astronaut riding a horse on mars, 4k, trending on artstation"
    want = hf_tokenizer(text)["input_ids"]
    out = run_json(capsys, text, "--syntax", "plain", "--family", "sd2", "--normalize", "hf-fast")
    ids = out["rows"][0]["ids"]
    assert ids[: len(want)] == want and set(ids[len(want) :]) == {0}


def test_truncate_reports_dropped_text_and_chunk_counts(capsys):
    long = ", ".join(f"tag{i}" for i in range(60))
    out = run_json(capsys, long, "--layout", "truncate")
    assert len(out["rows"]) == 1 and out["tokens"] > 75
    assert out["dropped"].endswith("tag59") and "tag0" not in out["dropped"].split(",")[0]
    out = run_json(capsys, long)
    assert len(out["rows"]) == -(-out["tokens"] // 75) or len(out["rows"]) == -(-out["tokens"] // 75) + 1
    assert out["capacity"] == 75 * len(out["rows"]) and out["dropped"] == ""


def test_break_and_sdxl_rows_by_encoder(capsys):
    out = run_json(capsys, "a fox BREAK a forest", "--family", "sdxl")
    assert len(out["rows"]) == 2 and out["tokens"] == 4 and out["capacity"] == 150  # real tokens, rows built
    assert out["counter"] == {"count": 75 + 2, "capacity": 150}  # A1111 counts a BREAK-ended chunk as 75
    part = out["parts"][0]["rows_by_encoder"]
    assert set(part) == {"clip_l", "clip_g"}
    assert part["clip_l"][0]["ids"][-1] == EOS and part["clip_g"][0]["ids"][-1] == 0


def test_human_view_shows_rows_counter_and_dropped(capsys):
    long = " ".join(["forest"] * 80)
    assert main(["inspect", long, "--layout", "truncate"]) == 0
    text = capsys.readouterr().out
    assert "row 1" in text and "tokens: 80/75 in 1 row(s)" in text and "dropped:" in text
    assert main(["inspect", REF_EXAMPLE]) == 0
    text = capsys.readouterr().out
    assert "house" in text and "1.57" in text and "tokens: 10/75" in text
    assert main(["inspect", "a café in the 森林 🦊"]) == 0
    text = capsys.readouterr().out
    assert "café" in text and "森" in text and "🦊" in text and "Ã" not in text  # as typed, never BPE bytes


def test_syntax_error_is_exit_2_with_caret(capsys):
    assert main(["inspect", "a (b:1000) c", "--json"]) == 2  # |w| > 100 is refused
    err = capsys.readouterr().err
    assert "1000" in err and "^" in err and capsys.readouterr().out == ""
    assert main(["inspect", '("a", "b").blend(1)', "--json", "--syntax", "compel"]) == 2  # compel: counts
    assert "^" in capsys.readouterr().err


def test_tokenize_reads_lines_and_prints_arrays(hf_tokenizer):
    lines = ["a red fox", "", "wow!!!", "Cuphead's friend & co."]
    proc = subprocess.run(
        [sys.executable, "-m", "sdclip", "tokenize", "--normalize", "hf-fast"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, check=True,
    )
    got = [json.loads(x) for x in proc.stdout.splitlines()]
    assert got == [hf_tokenizer(x)["input_ids"][1:-1] for x in lines]
    assert got[2] == [hf_tokenizer.convert_tokens_to_ids("wow</w>")] + [hf_tokenizer.convert_tokens_to_ids("!!!</w>")]


def test_inspect_and_tokenize_work_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
        "from sdclip.cli.main import main\n"
        "assert main(['inspect', 'a (red:1.3) fox BREAK forest', '--json']) == 0\n"
        "assert main(['inspect', 'a [b] c', '--syntax', 'comfy']) == 0\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert '"rows"' in proc.stdout


def test_long_layout_needs_a_long_clip_family(capsys):
    assert main(["inspect", "a fox", "--layout", "long", "--family", "sd1"]) == 2
    assert "Long-CLIP" in capsys.readouterr().err
    out = run_json(capsys, "a fox", "--layout", "long", "--family", "longclip")
    assert len(out["rows"][0]["ids"]) == 248 and out["capacity"] == 246


def test_tokenize_refuses_bytes_that_are_not_utf8():
    proc = subprocess.run(
        [sys.executable, "-m", "sdclip", "tokenize"], input=b"a fox\n\xff\xfe bad\n", capture_output=True
    )
    assert proc.returncode == 2
    assert proc.stdout.decode().splitlines() == ["[320,3240]"]  # the good line before it is answered
    assert b"line 2" in proc.stderr and b"not UTF-8" in proc.stderr


def test_counts_are_per_part_and_truncate_shows_its_capacity(capsys):
    out = run_json(capsys, "a red fox AND a blue bird :0.5")
    assert [p["tokens"] for p in out["parts"]] == [3, 3] and [p["capacity"] for p in out["parts"]] == [75, 75]
    assert out["tokens"] == 6 and out["capacity"] == 150
    long = " ".join(["forest"] * 5000)
    out = run_json(capsys, long, "--layout", "truncate")
    assert (out["tokens"], out["capacity"]) == (5000, 75) and out["dropped"]
    out = run_json(capsys, long)
    assert out["warnings"] and "refuses more than 64" in out["warnings"][0]
    assert len(out["rows"]) == 64 and out["rows_omitted"] == 67 - 64  # bounded unless --full
    assert len(run_json(capsys, long, "--full")["rows"]) == 67


def test_scheduled_prompt_at_a_step_and_prompt_from_stdin():
    run = subprocess.run([sys.executable, "-m", "sdclip", "inspect", "--json", "--step", "15", "--steps", "20"],
                         input="a [dog:cat:0.5] fox\n", capture_output=True, text=True, check=True)
    out = json.loads(run.stdout)
    assert out["schedule"]["text"] == "a cat fox" and out["schedule"]["step"] == 15 and out["tokens"] == 3
    run = subprocess.run([sys.executable, "-m", "sdclip", "inspect", "--step", "3"], input="a [dog:cat:0.5] fox",
                         capture_output=True, text=True, check=True)
    assert "showing step 3 of 20" in run.stdout and "dog" in run.stdout


def test_extra_network_tags_are_listed_not_encoded(capsys):
    out = run_json(capsys, "a fox, <lora:foxy:0.8>, forest")
    assert out["extra_networks"] == [{"kind": "lora", "name": "foxy", "args": ["0.8"], "span": [7, 22]}]
    assert out["warnings"] and "extra-network" in out["warnings"][0]


def test_a_bad_flag_shows_its_commands_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["inspect", "a fox", "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: sdclip inspect" in err and "--bogus" in err


def test_version_and_python_m():
    run = subprocess.run([sys.executable, "-m", "sdclip", "--version"], capture_output=True, text=True, check=True)
    assert run.stdout.startswith("sdclip ")


def test_a_missing_extra_names_its_install_line():
    """`sdclip serve` without the serve extra: one line naming `pip install 'sdclip[serve]'`, no traceback."""
    code = "import sys; sys.modules['uvicorn'] = None; from sdclip.cli.main import main; sys.exit(main(['serve']))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 2 and "pip install 'sdclip[serve]'" in run.stderr and "Traceback" not in run.stderr


def test_piping_json_into_a_closed_reader_is_quiet():
    """`sdclip inspect … --json | head -c 50`: the reader goes away; no BrokenPipeError traceback."""
    proc = subprocess.run(f"{sys.executable} -m sdclip inspect --json --full < /dev/stdin | head -c 50",
                          shell=True, input="a fox " * 20000, capture_output=True, text=True)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
