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


# ---- issue 24.8: huge prompts are summarised in bounded time and memory ------------------------------------

def _inspect_big(unit: str, size: int, *flags: str) -> tuple[dict, float]:
    """`sdclip inspect --json` on `size` characters of `unit`, from standard input, in a child process with a
    timeout and an address-space limit: (the JSON object, the child's peak RSS in MB)."""
    import resource

    text = (unit * (size // len(unit) + 1))[:size]

    def limit() -> None:  # 3 GB of address space: a 1.7 M-part prompt once needed far more
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    res = subprocess.run([sys.executable, "-m", "sdclip", "inspect", "--json", *flags], input=text.encode(),
                         capture_output=True, timeout=60, preexec_fn=limit)
    assert res.returncode == 0, res.stderr.decode()[-500:]
    return json.loads(res.stdout), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def test_a_prompt_of_160k_and_parts_is_summarised_not_laid_out_whole():
    """1 MB of `a AND ` (166,667 parts): 64 rows listed, the other parts counted, not parsed or laid out.
    Before: every part was parsed, tokenized and listed (1 MB took 45 s and printed 175 MB of JSON)."""
    out, _ = _inspect_big("a AND ", 1_000_000)
    assert len(out["rows"]) == 64 and len(out["parts"]) <= 65
    assert out["stopped"]["parts_omitted"] == 166_667 - len(out["parts"])
    assert "AND part(s) not laid out" in out["stopped"]["reason"]
    assert out["counter"] == {"count": 1, "capacity": 75}  # A1111: the largest part's count


@pytest.mark.parametrize("unit", ["a BREAK ", "a (red fox:1.2), [snow], "])
def test_a_huge_prompt_in_one_part_lays_out_a_prefix(unit):
    """300 kB in one part: only a prefix is tokenized and laid out (before: every row, 37,500 of them for the
    BREAK prompt here; at 10 MB 1.25 M rows and 4.5 GB)."""
    out, _ = _inspect_big(unit, 300_000)
    assert len(out["rows"]) == 64 and out["stopped"]["part_cut"] and out["stopped"]["parts_omitted"] == 0
    assert out["parts"][0]["rows"] < 2_000  # a bounded prefix, not the whole's rows


def test_summary_rows_are_exactly_the_first_rows_of_the_whole(capsys):
    """The rows a summary lists are the whole prompt's first rows, for a prompt just past the summary's first
    prefix (so the prefix doubles) in the chunk and window layouts."""
    from sdclip.conventions.family import get_family
    from sdclip.conventions.presets import Options
    from sdclip.prepare import prepare
    from sdclip.tokenizer import Tokenizer

    text = "a photo of a (red fox:1.2), [snow], golden hour, " * 400 + "x" * 3000 + " end"
    tok = Tokenizer.default("hf-slow")
    for layout in ("chunk", "window"):
        options = Options.preset("a1111", layout=layout, stride=20)
        whole = prepare(text, options, get_family("sdxl"), tok)
        part = prepare(text, options, get_family("sdxl"), tok, stop_after=64).parts[0]
        for e in range(2):
            assert part.rows[e].ids[:64] == whole.parts[0].rows[e].ids[:64]
            assert part.rows[e].weights[:64] == whole.parts[0].rows[e].weights[:64]
            assert part.rows[e].keep[:64] == whole.parts[0].rows[e].keep[:64]
        assert len(part.rows[0]) < len(whole.parts[0].rows[0])


def test_human_view_of_a_huge_prompt_says_what_it_left_out():
    text = "a AND " * 200_000
    res = subprocess.run([sys.executable, "-m", "sdclip", "inspect"], input=text.encode(), capture_output=True,
                         timeout=60, env={**__import__("os").environ, "COLUMNS": "200"})
    out = res.stdout.decode()
    assert res.returncode == 0 and out.count("row 1 │") == 64
    assert "199936 more AND part(s) not laid out" in out


# ---- issue 20.4: the counter is AUTOMATIC1111's: the largest AND part's count ------------------------------

def a1111_counter(text: str) -> tuple[int, int]:
    """A transliteration of A1111's `update_token_counter` (no scheduling in these prompts): split the prompt
    as `get_multicond_prompt_list` does, count each part as `process_texts` (tokenize_line's count), and
    take the max with its target `ceil(count / 75) * 75`."""
    import math
    import re

    from a1111_oracle import chunk_segments, comma_id, hf_tokenizer, parse_attention

    re_and = re.compile(r"\bAND\b")
    re_weight = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
    counts = []
    for sub in re_and.split(text):
        part = re_weight.search(sub).group(1)
        parsed = parse_attention(part)
        ids = hf_tokenizer()([t for t, _ in parsed], add_special_tokens=False)["input_ids"]
        segments = [("BREAK", -1) if (t == "BREAK" and w == -1) else (i, w) for i, (t, w) in zip(ids, parsed)]
        counts.append(chunk_segments(segments, comma=comma_id())[1])
    count = max(counts)
    return count, math.ceil(max(count, 1) / 75) * 75


@pytest.mark.parametrize("text", [
    "a red fox AND a blue bird flying over the sea",
    "a cat AND " + "a dog, " * 40 + " AND a (house:1.2)",
    "short AND " + "long words here " * 30 + "BREAK more AND x:0.5",
    "one part only, with a comma",
    "a AND b AND c AND d",
])
def test_counter_is_a1111s_largest_part(capsys, text):
    out = run_json(capsys, text)
    count, cap = a1111_counter(text)
    assert out["counter"] == {"count": count, "capacity": cap}
    if len(out["parts"]) > 1:
        assert out["counter"]["count"] < sum(p["tokens"] for p in out["parts"]) + 75 * len(out["parts"])


# ---- issue 19.19: T5 pieces drawn as typed --------------------------------------------------------------

@pytest.mark.slow  # trains the tiny T5 tokenizer (~10 s)
def test_t5_line_draws_a_lone_word_start_piece_as_a_visible_space(tmp_path):
    """`a red fox` is `▁a ▁ red ▁fo x` in the tiny T5 vocabulary: the lone `▁` is drawn `·`, never as the
    next letter (before: `a r red fo x`)."""
    pytest.importorskip("sentencepiece")  # trains the tiny vocabulary; absent from the torch-free venv
    pytest.importorskip("torch")
    from tiny_pipelines import t5_tokenizer_dir

    from sdclip.tokenizer.t5 import T5Tokenizer

    folder = t5_tokenizer_dir()
    tok = T5Tokenizer.from_folder(folder)
    pieces = [tok.token_text(i) for i in tok.encode("a red fox")]
    assert "▁" in pieces  # the case under test
    res = subprocess.run([sys.executable, "-m", "sdclip", "inspect", "--family", "sd3", "--t5-tokenizer", str(folder),
                          "a (red:1.3) fox, a red fox"], capture_output=True, timeout=60,
                         env={**__import__("os").environ, "COLUMNS": "300"})
    assert res.returncode == 0, res.stderr.decode()
    line = next(li for li in res.stdout.decode().splitlines() if li.startswith("T5"))
    assert " · red " in line and " r " not in line and "fo x" in line


def test_counter_of_a_scheduled_prompt_is_its_largest_text(capsys):
    """A1111 counts every text of the schedule (update_token_counter flattens the schedules of all parts), so
    the counter at step 1 already shows the long text that step 15 will use."""
    from sdclip.syntax import schedule

    text = "a [dog:" + "red " * 100 + ":0.5] fox AND small"
    out = run_json(capsys, text, "--steps", "20", "--step", "1")
    want = max(a1111_counter(e.text) for e in schedule(text, 20).entries)
    assert out["counter"] == {"count": want[0], "capacity": want[1]} and want[0] > 100 and out["tokens"] < 10
    assert main(["inspect", text, "--steps", "20", "--step", "1"]) == 0
    assert f"AUTOMATIC1111's counter: {want[0]}/{want[1]}" in capsys.readouterr().out.replace("\n", "")


@pytest.mark.slow  # trains the tiny T5 tokenizer (~10 s)
def test_a_t5_only_family_shows_its_t5_sequence_only(tmp_path):
    """Wan / Chroma / PixArt-Σ / AuraFlow: no CLIP row drawn from T5 ids (before: `row 1 │ a r red fo x ''`) and
    no n/75 or AUTOMATIC1111 counter; the T5 line counts n/max_sequence_length. An extra-network tag is text."""
    pytest.importorskip("sentencepiece")
    pytest.importorskip("torch")
    from tiny_pipelines import t5_tokenizer_dir

    res = subprocess.run([sys.executable, "-m", "sdclip", "inspect", "--family", "pixart-sigma", "--t5-tokenizer",
                          str(t5_tokenizer_dir()), "a (red:1.2) fox <lora:x:1>"], capture_output=True, timeout=60,
                         env={**__import__("os").environ, "COLUMNS": "300"})
    assert res.returncode == 0, res.stderr.decode()
    out = res.stdout.decode()
    assert "row 1" not in out and "/75" not in out and "AUTOMATIC1111" not in out, out
    assert next(li for li in out.splitlines() if li.startswith("T5")).endswith("/300")
    assert "removed extra network: <lora:x:1>" in out
