"""Every extra installs what its commands import (the README's "everything" install could not run `sdclip
attention`: the attention extra lacked transformers).

A static check, fast: each command's module graph (the `sdclip.*` modules its CLI module imports, at the top
or inside functions, transitively; imports guarded by `except ImportError` are optional) is walked with `ast`,
and every third-party top-level import in it must come from a distribution that the package metadata
(importlib.metadata `requires`) lists in the core dependencies or in that command's extras. Import names map
to distributions with `packages_distributions()`. One slow test installs the attention extra alone into a
fresh venv (no system site-packages) and imports the attention command's whole graph there."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from sdclip.cli.main import COMMANDS, EXTRAS

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

#: the extras each command needs (README: `serve` needs `serve`, and torch for --model; `embed --engine ray`
#: and parquet captions need `ray`); `attention` is one extra that brings all it runs
COMMAND_EXTRAS: dict[str, tuple[str, ...]] = {
    "inspect": (),
    "tokenize": (),
    "encode": ("torch",),
    "serve": ("serve", "torch"),
    "attention": ("attention",),
    "embed": ("torch", "ray"),
}
OPTIONAL_GUARDS = {"ImportError", "ModuleNotFoundError"}


def module_path(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def imports_of(name: str) -> frozenset[str]:
    """Every module `name` imports anywhere in its text, except under `try: … except ImportError`."""
    path = module_path(name)
    assert path is not None, name
    found: set[str] = set()

    def visit(node: ast.AST, optional: bool) -> None:
        if isinstance(node, ast.Try):
            guards = any(h.type is None or any(isinstance(n, ast.Name) and n.id in OPTIONAL_GUARDS
                                               for n in ast.walk(h.type)) for h in node.handlers)
            for child in node.body:
                visit(child, optional or guards)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, optional)
            return
        if isinstance(node, ast.Import) and not optional:
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not optional:
            module = node.module or ""
            if node.level:  # relative: from the module's package
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                module = f"{package}.{module}" if module else package
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names if module_path(f"{module}.{a.name}"))
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return frozenset(found)


def command_graph(command: str) -> tuple[set[str], set[str]]:
    """(sdclip modules, third-party top-level names) that `sdclip COMMAND` can import."""
    seen: set[str] = set()
    third_party: set[str] = set()
    todo = ["sdclip.cli.main", f"sdclip.cli.{command}"]  # the entry point, then the command's module
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in imports_of(name):
            parts = imported.split(".")
            if parts[0] == "sdclip":  # the module and the packages above it run
                todo.extend(p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if module_path(p))
            elif parts[0] not in sys.stdlib_module_names and parts[0] != "__future__":
                third_party.add(parts[0])
    return seen, third_party


@cache
def requirements() -> tuple[str, ...]:
    return tuple(md.requires("sdclip") or ())


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(extras: tuple[str, ...]) -> set[str]:
    """Distributions the installed metadata of sdclip requires for core + `extras` (self-references expanded)."""
    out: set[str] = set()
    todo, done = [*extras], set()
    core = True
    while core or todo:
        extra = None if core else todo.pop()
        core = False
        if extra in done:
            continue
        done.add(extra)
        for text in requirements():
            req = Requirement(text)
            wanted = req.marker is None if extra is None else (req.marker is not None and req.marker.evaluate({"extra": extra}))
            if not wanted:
                continue
            if canonical(req.name) == "sdclip":
                todo.extend(req.extras)
            else:
                out.add(canonical(req.name))
    return out


@cache
def installed_distributions() -> dict[str, list[str]]:
    return md.packages_distributions()  # scans every installed distribution: once


def distributions_of(top: str) -> set[str]:
    """The distributions that provide import name `top` (its own name when none installed here does)."""
    return {canonical(d) for d in installed_distributions().get(top, [])} or {canonical(top)}


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_imports_come_from_core_and_its_extras(command):
    extras = COMMAND_EXTRAS[command]
    have = declared(extras)
    _, third_party = command_graph(command)
    missing = {top: sorted(distributions_of(top)) for top in sorted(third_party) if not distributions_of(top) & have}
    assert not missing, f"`sdclip {command}` imports {missing}, which core + extra(s) {extras} do not install"


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_optional_import_names_an_extra_of_its_command(command):
    """cli.main turns ModuleNotFoundError into `pip install 'sdclip[EXTRA]'`: every non-core import of a
    command needs its line there, naming an extra that installs it."""
    core = declared(())
    _, third_party = command_graph(command)
    for top in third_party:
        if distributions_of(top) & core:
            continue
        assert top in EXTRAS, f"{top} (imported by `sdclip {command}`) has no extra in sdclip.cli.main.EXTRAS"
        assert distributions_of(top) & declared((EXTRAS[top],)), f"extra {EXTRAS[top]} does not install {top}"


def test_every_command_has_its_extras_named():
    assert set(COMMAND_EXTRAS) == set(COMMANDS)
    extras = set(md.metadata("sdclip").get_all("Provides-Extra") or [])
    assert {e for es in COMMAND_EXTRAS.values() for e in es} <= extras
    assert "transformers" in declared(("attention",)) and "torch" in declared(("attention",))


def test_installed_metadata_is_this_checkouts():
    """The checks above read the installed metadata: it must be pyproject.toml's (re-run the setup if not)."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for extra, reqs in project["optional-dependencies"].items():
        want = {canonical(Requirement(r).name) for r in reqs}
        got = {canonical(Requirement(r).name) for r in md.requires("sdclip") or []
               if Requirement(r).marker is not None and Requirement(r).marker.evaluate({"extra": extra})}
        assert got == want, f"stale install of sdclip (extra {extra}): pip install -e . (or scripts/setup-tests.sh)"


@pytest.mark.slow
def test_the_attention_extra_alone_runs_attention(tmp_path):
    """A real venv without system site-packages: `pip install .[attention]` (torch from where the test setup
    gets it), then every module of the attention command imports, and the other extras are absent."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    torch_index = subprocess.run(["bash", "-c", ". scripts/torch-index.sh && torch_index_args"], cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout.split()
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", "scripts/test-constraints.txt"]
    subprocess.run([*pip, *torch_index, "torch"], cwd=ROOT, check=True, timeout=900)
    source = tmp_path / "sdclip"  # built from a copy: pip's in-tree build would leave build/ in the checkout
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    subprocess.run([*pip, f"{source}[attention]"], cwd=ROOT, check=True, timeout=900)
    modules, _ = command_graph("attention")
    code = ("import importlib, importlib.util, sys\n"
            f"for m in {sorted(modules)!r}: importlib.import_module(m)\n"
            "assert importlib.util.find_spec('starlette') is None and importlib.util.find_spec('ray') is None\n"
            "from sdclip.cli.main import main\n"
            "sys.exit(main(['attention', '--help']))\n")
    run = subprocess.run([python, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "--clip-skip" in run.stdout
