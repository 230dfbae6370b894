"""SD3 / Flux weights in every layout users have, each checked against the tiny pipeline's own encode_prompt:
diffusers pipeline folders (with and without SD3's text_encoder_3), SD3 single files (`text_encoders.*`),
ComfyUI's separate clip_l / clip_g / t5xxl_fp16 files (several paths or one folder), and the refusal of a
Flux file that holds only the diffusion transformer.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sdclip.conditioner import Conditioner
from sdclip.encoder.loading.checkpoint import CheckpointError
from tiny_models import hf4_state_dict
from tiny_pipelines import flux_pipeline, sd3_pipeline, t5_tokenizer_dir
from tiny_t5 import state as t5_state

PROMPT = "a red fox in a misty forest, golden hour"
NEGATIVE = "blurry, lowres"
NAMES = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")


def _identity_l(pipe):  # noqa: ANN001, ANN202
    """SD3 single / ComfyUI files keep no CLIP-L projection; diffusers loads an identity for it."""
    with torch.no_grad():
        pipe.text_encoder.text_projection.weight.copy_(torch.eye(pipe.text_encoder.config.hidden_size))
    return pipe


def _fp16_t5(model):  # noqa: ANN001, ANN202
    """Round a T5's weights to fp16 (what t5xxl_fp16.safetensors holds) so fp32 parity stays exact."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


@pytest.fixture(scope="module")
def sd3():
    pipe = _identity_l(sd3_pipeline(seed=3))
    _fp16_t5(pipe.text_encoder_3)
    return pipe


@pytest.fixture(scope="module")
def flux():
    pipe = flux_pipeline(seed=5)
    _fp16_t5(pipe.text_encoder_2)
    return pipe


def sd3_reference(pipe, prompt=PROMPT, negative=NEGATIVE) -> dict:  # noqa: ANN001
    with torch.no_grad():
        return dict(zip(NAMES, pipe.encode_prompt(prompt, None, None, device="cpu", negative_prompt=negative)))


def flux_reference(pipe, prompt=PROMPT) -> dict:  # noqa: ANN001
    with torch.no_grad():
        embeds, pooled, _ = pipe.encode_prompt(prompt, None, device="cpu")
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


def check(cond: Conditioner, theirs: dict, negative=NEGATIVE) -> None:  # noqa: ANN001
    ours = cond(PROMPT, negative).diffusers_kwargs()
    for name, value in theirs.items():
        assert ours[name].shape == value.shape, name
        torch.testing.assert_close(ours[name], value, rtol=1e-4, atol=1e-4, msg=name)


def _tokenizer_beside(folder) -> None:  # noqa: ANN001
    import shutil

    shutil.copytree(t5_tokenizer_dir(), folder / "t5_tokenizer")


def test_sd3_pipeline_folder(sd3, tmp_path):
    sd3.save_pretrained(str(tmp_path / "sd3"))
    cond = Conditioner.from_pretrained(tmp_path / "sd3", preset="diffusers")
    assert cond.family.name == "sd3"
    check(cond, sd3_reference(sd3))


def test_sd3_pipeline_folder_without_t5(tmp_path):
    pipe = sd3_pipeline(seed=7, t5=False)
    pipe.save_pretrained(str(tmp_path / "sd3"))
    index = json.loads((tmp_path / "sd3" / "model_index.json").read_text())
    assert index.get("text_encoder_3") in (None, [None, None])
    cond = Conditioner.from_pretrained(tmp_path / "sd3", preset="diffusers")
    assert cond.encoders[2] is None
    check(cond, sd3_reference(pipe))  # zeros [B, 256, joint_attention_dim] read from transformer/config.json


def test_flux_pipeline_folder(flux, tmp_path):
    flux.save_pretrained(str(tmp_path / "flux"))
    cond = Conditioner.from_pretrained(tmp_path / "flux", preset="diffusers")
    assert cond.family.name == "flux"
    check(cond, flux_reference(flux), negative=None)


def _sd3_single_file(pipe, path) -> None:  # noqa: ANN001
    out = {}
    for k, v in hf4_state_dict(pipe.text_encoder).items():
        if k != "text_projection.weight":  # SD3 single files keep none for CLIP-L
            out["text_encoders.clip_l.transformer." + k] = v
    for k, v in hf4_state_dict(pipe.text_encoder_2).items():
        out["text_encoders.clip_g.transformer." + k] = v
    for k, v in t5_state(pipe.text_encoder_3).items():
        out["text_encoders.t5xxl.transformer." + k] = v.half()
    out["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"] = torch.full((4, 4), float("nan"))
    save_file(out, str(path))


def test_sd3_single_file(sd3, tmp_path):
    _sd3_single_file(sd3, tmp_path / "sd3_medium.safetensors")
    _tokenizer_beside(tmp_path)
    cond = Conditioner.from_pretrained(tmp_path / "sd3_medium.safetensors", preset="diffusers")
    check(cond, sd3_reference(sd3))


def test_sd3_single_file_needs_a_t5_tokenizer(sd3, tmp_path):
    _sd3_single_file(sd3, tmp_path / "sd3_medium.safetensors")
    with pytest.raises(CheckpointError, match="no T5 tokenizer"):
        Conditioner.from_pretrained(tmp_path / "sd3_medium.safetensors", preset="diffusers")


def _comfy_files(pipe, folder, clips) -> list:  # noqa: ANN001
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, model in clips:
        sd = hf4_state_dict(model)
        sd.pop("text_projection.weight", None) if name == "clip_l" else None
        paths.append(folder / f"{name}.safetensors")
        save_file(sd, str(paths[-1]))
    t5 = pipe.text_encoder_3 if hasattr(pipe, "text_encoder_3") else pipe.text_encoder_2
    paths.append(folder / "t5xxl_fp16.safetensors")
    save_file({k: v.half() for k, v in t5_state(t5).items()}, str(paths[-1]))
    _tokenizer_beside(folder)
    return paths


def test_comfy_files_flux_as_paths_and_folder(flux, tmp_path):
    paths = _comfy_files(flux, tmp_path / "clip", [("clip_l", flux.text_encoder)])
    theirs = flux_reference(flux)
    for source in (paths[::-1], tmp_path / "clip"):
        cond = Conditioner.from_pretrained(source, preset="diffusers")
        assert cond.family.name == "flux"
        check(cond, theirs, negative=None)


def test_comfy_files_sd3(sd3, tmp_path):
    paths = _comfy_files(sd3, tmp_path / "clip", [("clip_l", sd3.text_encoder), ("clip_g", sd3.text_encoder_2)])
    cond = Conditioner.from_pretrained(paths, preset="diffusers")
    assert cond.family.name == "sd3"
    check(cond, sd3_reference(sd3))


def test_flux_transformer_only_file_names_the_files_to_add(tmp_path):
    path = tmp_path / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(4, 4), "img_in.weight": torch.zeros(4, 4)}, str(path))
    with pytest.raises(CheckpointError, match="clip_l.safetensors and t5xxl_fp16.safetensors"):
        Conditioner.from_pretrained(path)


def test_two_t5_files_are_refused(flux, tmp_path):
    paths = _comfy_files(flux, tmp_path / "clip", [("clip_l", flux.text_encoder)])
    extra = tmp_path / "clip" / "t5xxl_copy.safetensors"
    extra.write_bytes(paths[-1].read_bytes())
    with pytest.raises(CheckpointError, match="several T5 encoders"):
        Conditioner.from_pretrained(tmp_path / "clip")


def test_comfy_fp8_t5_file(flux, tmp_path):
    """t5xxl_fp8_e4m3fn.safetensors: weights stay fp8 and are upcast per layer; close to the fp16 result."""
    from tiny_t5 import to_fp8

    paths = _comfy_files(flux, tmp_path / "clip", [("clip_l", flux.text_encoder)])
    fp8 = tmp_path / "clip" / "t5xxl_fp8_e4m3fn.safetensors"
    save_file({k: to_fp8(v) if v.dim() == 2 else v.half() for k, v in t5_state(flux.text_encoder_2).items()}, str(fp8))
    paths[-1].unlink()
    cond = Conditioner.from_pretrained(tmp_path / "clip", preset="diffusers")
    assert cond.encoders[1].blocks[0].q.weight.dtype == torch.float8_e4m3fn
    ours = cond(PROMPT).diffusers_kwargs()["prompt_embeds"]
    theirs = flux_reference(flux)["prompt_embeds"]
    assert ours.shape == theirs.shape and float((ours - theirs).norm() / theirs.norm()) < 0.2
