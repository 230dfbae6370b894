"""Issue 20's goal, kept: no stage asks which kind of encoder it holds. A comparison of an encoder kind
(`role.kind == "t5"`) or of a lane's tokenizer name (`== "t5_tokenizer"`) with a literal may sit only in the
lanes, the family table, and the places listed here with the reason they stay; a new one fails this test."""

from __future__ import annotations

import ast
from pathlib import Path

import sdclip

SRC = Path(sdclip.__file__).parent
KINDS = {"clip", "t5", "llm"}
TOKENIZER_NAMES = {"tokenizer", "t5_tokenizer", "llm_tokenizer"}
#: module → kind tests that remain, and why
REMAINING = {
    # clip skip walks the CLIP roles, and conventions/ (the ground floor) cannot import the lanes
    "conventions/presets.py": 2,
    # the LLM lane's own tokenizer adapter (a lane's stage file): is an LLM tokenizer needed at all
    "tokenizer/llm.py": 1,
}


def _is_kind(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr in ("kind", "tokenizer_name")) or (
        isinstance(node, ast.Name) and node.id == "kind")


def _literal(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in KINDS | TOKENIZER_NAMES


def kind_tests(path: Path) -> int:
    n = 0
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare) and all(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            sides = [node.left, *node.comparators]
            if any(_is_kind(s) for s in sides) and any(_literal(s) for s in sides):
                n += 1
    return n


def test_no_kind_tests_outside_the_lanes_and_the_family_table():
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("lanes/") or rel == "conventions/family.py":
            continue
        n = kind_tests(path)
        if n:
            found[rel] = n
    extra = {k: v for k, v in found.items() if v > REMAINING.get(k, 0)}
    assert not extra, f"kind tests outside the lanes (move the decision into the lane or a registry): {extra}"


def test_the_scan_sees_a_kind_test(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('def f(role, lane):\n    return role.kind == "t5" or lane.tokenizer_name != "t5_tokenizer"\n')
    assert kind_tests(probe) == 2
