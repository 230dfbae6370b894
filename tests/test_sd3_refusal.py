"""Until SD3 / Flux are wired in, their folders and files are refused, never read as SDXL / SD1."""

from __future__ import annotations

import json

import pytest

from sdclip.encoder.loading.checkpoint import CheckpointError
from sdclip.encoder.loading.clip import load_text_encoders
from tiny_t5 import tiny_t5, write_layout


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    model = tiny_t5(seed=4)
    root = tmp_path_factory.mktemp("refuse")
    return model, root


def test_sd3_pipeline_folder(t5):
    model, root = t5
    folder = root / "sd3"
    write_layout("folder", model, folder)  # text_encoder_3/
    (folder / "text_encoder").mkdir()
    (folder / "text_encoder_2").mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(CheckpointError, match="SD3/SD3.5/Flux pipeline"):
        load_text_encoders(folder)


def test_flux_pipeline_folder(t5):
    model, root = t5
    folder = root / "flux"
    model.save_pretrained(str(folder / "text_encoder_2"))
    (folder / "text_encoder").mkdir()
    with pytest.raises(CheckpointError, match="T5 encoder found"):
        load_text_encoders(folder)


@pytest.mark.parametrize("layout", ["single", "fp16"])
def test_sd3_single_and_t5_files(t5, layout):
    model, root = t5
    path = write_layout(layout, model, root / layout)
    with pytest.raises(CheckpointError, match="SD3/SD3.5/Flux text-encoder file"):
        load_text_encoders(path)
