"""The trainer formats are tables (sdclip.jobs.formats: per format, per family, the keys, flags and file
names) read by one writer path. Each table covers exactly the families the format claims (the README's
trainer table and the registry's docstring), writes exactly its keys, and a family no table holds is refused
in one line naming the formats that can. The formats' bytes are checked against the trainers' loaders in
test_embed_formats.py; these tests need no model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import sdclip.jobs.formats as formats
from sdclip.conventions.family import FAMILIES
from sdclip.jobs.formats import FORMATS, NATIVE, check_format
from sdclip.jobs.formats.base import SOURCES, RowContext
from sdclip.jobs.manifest import JobError

README = Path(__file__).resolve().parents[2] / "README.md"
#: the README's names for the families
NAMES = {"SDXL": "sdxl", "SD3": "sd3", "Flux": "flux", "FLUX.1 Kontext (flux)": "flux", "Wan": "wan",
         "Qwen-Image": "qwen-image", "Z-Image": "z-image"}


def readme_rows() -> list[tuple[str, set[str], str]]:
    """(--format, families, keys column) of each row of the README's trainer table."""
    out = []
    for line in README.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\s*\| [^|]+ \| ([^|]+) \| `--format ([\w-]+)` \| [^|]+ \| (.+) \|\s*$", line)
        if m:
            out.append((m.group(2), {NAMES[name.strip()] for name in m.group(1).split(", ")}, m.group(3)))
    return out


def readme_claims() -> dict[str, set[str]]:
    """--format → the families the README says it holds."""
    out: dict[str, set[str]] = {}
    for name, families, _ in readme_rows():
        out.setdefault(name, set()).update(families)
    return out


def docstring_claims() -> dict[str, set[str]]:
    """module → families, from the registry's docstring table."""
    out = {}
    for m in re.finditer(r"^\| [^|]+\| (\w+)\s+\| ([^|]+)\|$", formats.__doc__ or "", re.M):
        fams = {w for w in re.findall(r"[\w-]+", m.group(2).split("(")[0] + m.group(2).split(")")[-1]) if w in FAMILIES}
        out[m.group(1)] = fams
    return out


def test_every_table_covers_exactly_the_families_its_format_claims():
    claims = readme_claims()
    assert set(claims) == set(FORMATS)
    for name, fmt in FORMATS.items():
        assert set(fmt.tables) == claims[name], name
        assert fmt.families == tuple(fmt.tables)
    docs = docstring_claims()
    assert {m: docs[m] for m in ("kohya", "musubi", "simpletuner", "ai_toolkit")} == {
        m: set(FORMATS[m.replace("_", "-")].tables) for m in ("kohya", "musubi", "simpletuner", "ai_toolkit")}


def test_the_readme_keys_are_the_tables_keys():
    for name, families, column in readme_rows():
        tables = [FORMATS[name].tables[f] for f in families]
        keys = {k.name for t in tables for k in t.keys} | {m for t in tables for m in (t.meta or {})}
        named = set(re.findall(r"`([a-z_0-9]+(?:_\{dtype\})?)`", column))
        assert named and named <= keys, (name, families, named - keys)


def test_every_key_reads_a_known_source_of_a_real_role():
    for name, fmt in FORMATS.items():
        for family, table in fmt.tables.items():
            assert family in FAMILIES, (name, family)
            for key in table.keys:
                assert key.source in SOURCES, (name, family, key)
                assert 0 <= key.role < len(FAMILIES[family].roles), (name, family, key)


@pytest.mark.parametrize("family", tuple(FAMILIES))
def test_a_family_no_table_holds_is_refused_naming_the_formats_that_can(family):
    able = [n for n, f in FORMATS.items() if family in f.tables]
    for name, fmt in FORMATS.items():
        if family in fmt.tables:
            continue
        with pytest.raises(JobError) as exc:
            check_format(name, family, "images", 1, {"t5_length": "max"})
        line = str(exc.value)
        assert "\n" not in line and f"not {family}" in line
        said = line.split("use --format ", 1)[1].split(" or ")
        assert said == [NATIVE, *able], (name, family, line)


def _context(family: str, root: Path, wheres: list[str], texts: list[str]) -> RowContext:
    """One shard's rows in the shapes sdclip.jobs.encode gives (tiny widths), random values."""
    import torch

    fam = FAMILIES[family]
    widths = [4 * (e + 2) for e in range(len(fam.roles))]
    targets = tuple(fam.length if all(r.length is None for r in (fam.roles[i] for i in b)) else 16
                    for b in fam.sequence_blocks)
    n, slots = len(texts), sum(targets)
    width = max(sum(widths[i] for i in b) for b in fam.sequence_blocks)
    tensors = {"prompt_embeds": torch.randn(n, slots, width), "token_counts": torch.full((n, len(widths)), 3)}
    if fam.pooled_roles:
        tensors["pooled_prompt_embeds"] = torch.randn(n, sum(widths[i] for i in fam.pooled_roles))
    return RowContext(family, widths, targets, root / "images", root / "out", wheres, texts, tensors)


def _keys_of(path: Path) -> set[str]:
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path) as z:
            return set(z.files)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return set(f.keys())
    import torch

    return set(torch.load(path, weights_only=True))


@pytest.mark.parametrize(("name", "family"), [(n, f) for n, fmt in FORMATS.items() for f in fmt.tables])
def test_one_writer_writes_exactly_each_tables_keys(tmp_path, name, family):
    pytest.importorskip("torch")
    fmt = FORMATS[name]
    ctx = _context(family, tmp_path, ["a.png", "sub/b.png", "c.png"], ["a red fox", "a cat", "a red fox"])
    written = fmt.write(ctx)
    root = fmt.root_of(ctx.images, ctx.out)
    want = {k.name.replace("{dtype}", "float32") for k in fmt.tables[family].keys}
    assert written and len(written) == (2 if fmt.repeats == "once" else 3)  # SimpleTuner: one file per caption
    for rel in written:
        assert rel.endswith(fmt.suffixes) and _keys_of(root / rel) == want, (name, family, rel)


def test_two_images_of_one_name_are_refused_where_the_trainer_names_caches_by_file_name(tmp_path):
    pytest.importorskip("torch")
    ctx = _context("wan", tmp_path, ["a/x.png", "b/x.png"], ["a fox", "a cat"])
    with pytest.raises(JobError, match="a/x.png and b/x.png both cache as x_wan_te.safetensors .musubi-tuner"):
        FORMATS["musubi"].write(ctx)


def test_a_tables_row_join_is_a_known_layout_and_leaves_one_row_alone():
    """A `RowJoin` names a chunk style the layouts have and a preset that selects it; at one row it keeps
    the family's whole row (every preset's --max-rows 1 files are unchanged)."""
    from sdclip.conventions.presets import Options
    from sdclip.layout.chunk import CHUNKERS

    joins = [(name, family, t.join) for name, fmt in FORMATS.items() for family, t in fmt.tables.items() if t.join]
    assert [(n, f) for n, f, _ in joins] == [("kohya", "sdxl")]
    for _, family, join in joins:
        assert join.chunk_style in CHUNKERS and Options.preset(join.preset).chunk_style == join.chunk_style
        assert join.slots(1) == FAMILIES[family].length
        assert [join.slots(k) for k in range(2, join.max_rows + 1)] == [152, 227]  # sd-scripts' 150 / 225 + 2


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_the_writer_keeps_the_joined_slots_of_a_long_row(tmp_path, rows):
    """A job row of 77·K slots holds the joined sequence first (sdclip.jobs.encode pads after it): the file
    holds exactly its first K·75 + 2, each role's columns."""
    pytest.importorskip("torch")
    import numpy as np
    import torch

    ctx = _context("sdxl", tmp_path, ["a.png"], ["a red fox"])
    ctx.targets = (77 * rows,)
    ctx.tensors["prompt_embeds"] = torch.randn(1, 77 * rows, sum(ctx.widths))
    FORMATS["kohya"].write(ctx)
    with np.load(ctx.images / "a_te_outputs.npz") as z:
        e = ctx.tensors["prompt_embeds"][0].numpy()
        n, w = 75 * rows + 2, ctx.widths[0]
        assert np.array_equal(z["hidden_state1"], e[:n, :w]) and np.array_equal(z["hidden_state2"], e[:n, w:])
