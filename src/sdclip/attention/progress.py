"""What `sdclip attention` shows while it works (issue 19.12: it printed nothing until done).

On a terminal (stderr): a rich progress display, one line naming the stage (loading, encoding, writing) and
a bar over the denoising steps, cleared when done. Not a terminal (a pipe, a log file, a test): nothing, so
scripts see only the final `wrote …` line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class Shown:
    """The stages and steps of one run, drawn by a rich Progress (or by nothing when disabled)."""

    def __init__(self, bar, steps: int) -> None:  # noqa: ANN001
        self._bar = bar
        self._steps = steps
        self._stage = bar.add_task("starting", total=None)
        self._denoise = None

    def stage(self, text: str) -> None:
        self._bar.update(self._stage, description=text)

    def note(self, text: str) -> None:
        """One line on stderr, above the bar on a terminal (printed as written: no markup)."""
        self._bar.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def denoising(self) -> None:
        self.stage("denoising")
        self._denoise = self._bar.add_task("steps", total=self._steps)

    def step_callback(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:  # noqa: ANN001
        """diffusers' `callback_on_step_end`: one step done (returns the kwargs unchanged, as diffusers wants)."""
        if self._denoise is not None:
            self._bar.update(self._denoise, completed=step + 1)
        return callback_kwargs


@contextlib.contextmanager
def progress(steps: int) -> Iterator[Shown]:
    """A `Shown` drawing on stderr when it is a terminal; silent otherwise."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        yield Shown(bar, steps)
