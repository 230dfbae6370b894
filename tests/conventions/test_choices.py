"""conventions/ is the ground floor: data only, importing no stage; each stage's registry is keyed by exactly
the names conventions lists for its option."""

from __future__ import annotations

import subprocess
import sys

from sdclip.conventions import choices
from sdclip.layout import BUILDERS
from sdclip.layout.chunk import CHUNKERS
from sdclip.syntax import _PARSERS
from sdclip.tokenizer.weight_norm import TOKEN_NORMALIZATIONS


def test_conventions_import_no_stage():
    code = ("import sys, sdclip.conventions.family, sdclip.conventions.presets, sdclip.conventions.clip_skip\n"
            "stages = sorted(m for m in sys.modules if m.startswith(('sdclip.syntax', 'sdclip.tokenizer', 'sdclip.layout')))\n"
            "assert not stages, stages")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_every_registry_holds_exactly_the_names():
    assert tuple(_PARSERS) == choices.DIALECTS
    assert tuple(BUILDERS) == choices.LAYOUTS
    assert tuple(CHUNKERS) == choices.CHUNK_STYLES
    assert tuple(TOKEN_NORMALIZATIONS) == choices.TOKEN_NORMALIZATIONS
