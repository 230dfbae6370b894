"""`--format`: the trainers' own cache files, one module per trainer, found through one registry.

Each format is data: per family a table (`tables`: the keys its file holds and what each reads, flags, the
family's part of the file name), where its files go (`root`: beside the images, or in `--out`), how a file
is named and encoded, what its file names end with (`suffixes`: `--overwrite` and `--verify` touch nothing
else). One writer path (`base.write_rows`) reads the table for every format; `sdclip.jobs.work` calls
`write` for every format but sdclip's own shards, and nothing asks which format or family it holds. A
format whose tables lack the job's family is refused before anything is encoded, in one line naming the
formats that can.

| trainer (commit read)                  | module        | families                        |
|----------------------------------------|---------------|---------------------------------|
| kohya-ss/sd-scripts 48d368fa           | kohya         | sdxl, sd3, flux                 |
| kohya-ss/musubi-tuner 30c658c4         | musubi        | flux (FLUX.1 Kontext), wan, qwen-image, z-image |
| bghira/SimpleTuner bc8e6ab7            | simpletuner   | sdxl, sd3, flux                 |
| ostris/ai-toolkit 27a03a91             | ai_toolkit    | sdxl, sd3, flux                 |
"""

from __future__ import annotations

from sdclip.jobs.formats.base import Format, RowContext, refuse
from sdclip.jobs.formats.ai_toolkit import AI_TOOLKIT
from sdclip.jobs.formats.kohya import KOHYA
from sdclip.jobs.formats.musubi import MUSUBI
from sdclip.jobs.formats.simpletuner import SIMPLETUNER

#: sdclip's own sharded safetensors (sdclip.jobs.work writes them; sdclip.dataset reads them)
NATIVE = "safetensors"
#: --format name → its writer: the registry line a new trainer adds
FORMATS: dict[str, Format] = {f.name: f for f in (KOHYA, MUSUBI, SIMPLETUNER, AI_TOOLKIT)}
NAMES: tuple[str, ...] = (NATIVE, *FORMATS)


def get_format(name: str) -> Format | None:
    """The trainer format called `name`; None for sdclip's own shards."""
    return None if name == NATIVE else FORMATS[name]


def check_format(name: str, family: str, source_format: str, rows: int, options: dict) -> None:
    """Refuse, in one line, a format that cannot hold this job (JobError)."""
    fmt = get_format(name)
    if fmt is None:
        return
    if family not in fmt.families:
        able = [n for n, f in FORMATS.items() if family in f.families]
        refuse(f"--format {name} holds {', '.join(fmt.families)}, not {family}; for {family} use --format "
               + " or ".join([NATIVE, *able]))
    fmt.check(family, source_format, rows, options)


__all__ = ["FORMATS", "NAMES", "NATIVE", "Format", "RowContext", "check_format", "get_format"]
