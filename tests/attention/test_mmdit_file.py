"""`sdclip attention --model <SD3 | Flux | Chroma single file>`: tiny transformers written in the original
checkpoints' key names (tests/tiny_mmdit.py builders) give the maps and image of the same model loaded from its
diffusers folder; Flux / Chroma renaming equals diffusers' own converter at the real width; hostile, corrupt and
incomplete files are refused in one line before any output folder is made."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import tiny_mmdit
from sdclip.cli.main import main

PROMPT = "a photo of a red fox, jumping"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """No network and an empty Hugging Face cache: everything comes from the file and --pipeline-config."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Per kind: the diffusers folder and the single file(s) of the same weights."""
    root = tmp_path_factory.mktemp("mmdit-files")
    out = {}
    for kind in ("flux", "chroma"):
        pipe = getattr(tiny_mmdit, kind)()
        pipe.save_pretrained(str(root / kind))
        save_file(tiny_mmdit.flux_original(pipe.transformer), str(root / f"{kind}.safetensors"))
        out[kind] = root / kind, root / f"{kind}.safetensors"
    pipe = tiny_mmdit.flux()
    save_file(tiny_mmdit.flux_original(pipe.transformer, "model.diffusion_model."), str(root / "flux-comfy.safetensors"))
    out["flux-comfy"] = root / "flux", root / "flux-comfy.safetensors"
    pipe = tiny_mmdit.sd3_for_single_file()
    pipe.save_pretrained(str(root / "sd3"))
    save_file(tiny_mmdit.sd3_original(pipe), str(root / "sd3.safetensors"))
    save_file(tiny_mmdit.sd3_original(pipe, text_encoders=False), str(root / "sd3-bare.safetensors"))
    out["sd3"] = root / "sd3", root / "sd3.safetensors"
    out["sd3-bare"] = root / "sd3", root / "sd3-bare.safetensors"
    return out


def _maps(out) -> torch.Tensor:  # noqa: ANN001
    with safe_open(str(out / "maps.safetensors"), "pt") as f:
        return f.get_tensor("maps")


def _one_line(capsys, needle: str) -> str:  # noqa: ANN001
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("kind", ["flux", "flux-comfy", "chroma", "sd3", "sd3-bare"])
def test_single_file_maps_equal_the_folder_models(models: dict, kind: str, tmp_path, capsys) -> None:  # noqa: ANN001
    folder, file = models[kind]
    args = ["attention", "--prompt", PROMPT, "--negative", "blurry", "--steps", "2", "--size", "32x32"]
    assert main([*args, "--model", str(folder), "--out", str(tmp_path / "folder")]) == 0
    assert main([*args, "--model", str(file), "--pipeline-config", str(folder), "--out", str(tmp_path / "file")]) == 0
    assert "wrote" in capsys.readouterr().out
    a, b = _maps(tmp_path / "folder"), _maps(tmp_path / "file")
    assert a.shape == b.shape and a.shape[1:] == (8, 8)
    torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    assert (tmp_path / "file" / "image.png").read_bytes() == (tmp_path / "folder" / "image.png").read_bytes()


def test_flux_renaming_equals_diffusers_converter_at_the_real_width() -> None:
    """diffusers' converters split single blocks at 3072; at that width sdclip's table gives the same tensors
    (each original row labelled by a distinct number; one double, one single block, Flux-dev and Chroma names)."""
    from diffusers.loaders.single_file_utils import (convert_chroma_transformer_checkpoint_to_diffusers,
                                                     convert_flux_transformer_checkpoint_to_diffusers)

    from sdclip.attention.flux_keys import to_diffusers

    inner, mlp = 3072, 12288
    rows = {"linear1": 3 * inner + mlp, "qkv": 3 * inner}
    flux_names = [k for k in tiny_mmdit.flux_original(tiny_mmdit.flux(layers=1, single=1).transformer)]
    flux_names += ["guidance_in.in_layer.weight", "guidance_in.in_layer.bias", "guidance_in.out_layer.weight",
                   "guidance_in.out_layer.bias"]
    chroma_names = list(tiny_mmdit.flux_original(tiny_mmdit.chroma(layers=1, single=1).transformer))
    for names, convert in ((flux_names, convert_flux_transformer_checkpoint_to_diffusers),
                           (chroma_names, convert_chroma_transformer_checkpoint_to_diffusers)):
        start, state = 0, {}
        for name in names:
            n = next((r for part, r in rows.items() if part in name), 6)
            state["model.diffusion_model." + name] = torch.arange(start, start + n, dtype=torch.float64)[:, None]
            start += n
        ours = to_diffusers(dict(state), {"num_attention_heads": 24, "attention_head_dim": 128})
        theirs = convert(dict(state))
        assert ours.keys() == theirs.keys()
        for k in theirs:
            assert torch.equal(ours[k], theirs[k]), k


def test_hostile_corrupt_and_incomplete_files_are_one_line(models: dict, tmp_path, capsys) -> None:  # noqa: ANN001
    folder, file = models["flux"]
    out = tmp_path / "o"

    def run(model, *extra: str) -> int:  # noqa: ANN001
        return main(["attention", "--model", str(model), "--prompt", "fox", "--steps", "1", "--out", str(out), *extra])

    class Boom:  # a pickle that would run code when unpickled
        def __reduce__(self):  # noqa: ANN204
            return (print, ("unpickled!",))

    pickled = tmp_path / "evil.safetensors"
    pickled.write_bytes(pickle.dumps({"double_blocks.0.img_attn.norm.key_norm.scale": Boom()}))
    assert run(pickled, "--pipeline-config", str(folder)) == 2
    assert "unpickled!" not in _one_line(capsys, "not a readable .safetensors file")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    assert run(truncated, "--pipeline-config", str(folder)) == 2
    _one_line(capsys, "not a readable .safetensors file")
    huge = tmp_path / "huge-header.safetensors"
    huge.write_bytes((2**62).to_bytes(8, "little") + b"{}")
    assert run(huge, "--pipeline-config", str(folder)) == 2
    _one_line(capsys, "not a readable .safetensors file")
    sd = tiny_mmdit.flux_original(tiny_mmdit.flux().transformer)
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in sd.items() if not k.startswith("single_blocks.1.")}, str(partial))
    assert run(partial, "--pipeline-config", str(folder)) == 2
    _one_line(capsys, "the file lacks")
    wrong = tmp_path / "wrong-shape.safetensors"
    save_file({**sd, "img_in.weight": torch.zeros(3, 3)}, str(wrong))
    assert run(wrong, "--pipeline-config", str(folder)) == 2
    _one_line(capsys, "not an MM-DiT (flux) transformer diffusers can load")
    # another kind's configs (SD3's folder for a Flux file)
    assert run(file, "--pipeline-config", str(models["sd3"][0])) == 2
    _one_line(capsys, "holds a flux transformer (FluxPipeline), but --pipeline-config")
    assert not out.exists()


def test_without_configs_offline_names_pipeline_config(models: dict, tmp_path, capsys) -> None:  # noqa: ANN001
    """No --pipeline-config and an empty cache, offline: one line naming the repository diffusers would read
    (FLUX.1-schnell for a Flux file without guidance_in) and --pipeline-config."""
    _, file = models["flux"]
    out = tmp_path / "o"
    assert main(["attention", "--model", str(file), "--prompt", "fox", "--steps", "1", "--out", str(out)]) == 2
    err = _one_line(capsys, "--pipeline-config DIR")
    assert "black-forest-labs/FLUX.1-schnell" in err
    assert not out.exists()


def test_a_transformer_only_file_needs_the_other_components(models: dict, tmp_path, capsys) -> None:  # noqa: ANN001
    """A configs-only folder (no text encoder weights) for a Flux file: one line naming what is missing."""
    import shutil

    folder, file = models["flux"]
    configs = tmp_path / "configs"
    shutil.copytree(folder, configs, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    out = tmp_path / "o"
    assert main(["attention", "--model", str(file), "--pipeline-config", str(configs), "--prompt", "fox", "--steps", "1",
                 "--out", str(out)]) == 2
    err = _one_line(capsys, "the file holds the transformer only")
    assert "could not load the pipeline's" in err
    assert not out.exists()


def test_out_inside_the_config_folder_is_refused(models: dict, capsys) -> None:  # noqa: ANN001
    folder, file = models["flux"]
    out = folder / "maps-here"
    assert main(["attention", "--model", str(file), "--pipeline-config", str(folder), "--prompt", "fox",
                 "--out", str(out)]) == 2
    _one_line(capsys, f"is inside {folder}")
    assert not out.exists()
    # --text-encoders files are read too, with the T5 tokenizer folder beside them
    encoders = folder.parent / "encoders"
    (encoders / "t5_tokenizer").mkdir(parents=True, exist_ok=True)
    (encoders / "t5xxl.safetensors").write_bytes(file.read_bytes())
    out = encoders / "t5_tokenizer" / "maps"
    assert main(["attention", "--model", str(file), "--pipeline-config", str(folder), "--text-encoders",
                 str(encoders / "t5xxl.safetensors"), "--prompt", "fox", "--out", str(out)]) == 2
    _one_line(capsys, "t5_tokenizer,")
    assert not out.exists()


def test_sd3_text_encoders_come_from_the_file(models: dict, tmp_path, capsys) -> None:  # noqa: ANN001
    """An all-in-one SD3 file with a --pipeline-config folder that has configs and the VAE but no text encoder
    weights: the encoders are read from the file (the maps equal the folder model's); the bare file (no text
    encoders) then says what is missing; a file short of a transformer weight is refused in one line."""
    import shutil

    folder, file = models["sd3"]
    configs = tmp_path / "configs"
    shutil.copytree(folder, configs, ignore=lambda d, names: [n for n in names if n.endswith(".safetensors")
                                                              and "text_encoder" in d])
    assert (configs / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert not any((configs / "text_encoder_3").glob("*.safetensors"))
    args = ["attention", "--prompt", PROMPT, "--steps", "1", "--size", "32x32"]
    assert main([*args, "--model", str(folder), "--out", str(tmp_path / "folder")]) == 0
    assert main([*args, "--model", str(file), "--pipeline-config", str(configs), "--out", str(tmp_path / "file")]) == 0
    capsys.readouterr()
    torch.testing.assert_close(_maps(tmp_path / "file"), _maps(tmp_path / "folder"), atol=1e-6, rtol=1e-6)
    out = tmp_path / "o"
    assert main([*args, "--model", str(models["sd3-bare"][1]), "--pipeline-config", str(configs), "--out", str(out)]) == 2
    _one_line(capsys, "the file holds the transformer only")
    from safetensors.torch import load_file

    sd = load_file(str(file))
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in sd.items() if "joint_blocks.1.x_block.attn.ln_q" not in k}, str(partial))
    assert main([*args, "--model", str(partial), "--pipeline-config", str(configs), "--out", str(out)]) == 2
    _one_line(capsys, "the file lacks")
    assert not out.exists()


def test_a_file_diffusers_reads_as_another_model_needs_pipeline_config(models: dict, tmp_path, capsys) -> None:  # noqa: ANN001
    """Without --pipeline-config the repository comes from diffusers' reading of the file's shapes; a file it
    reads as another model (this narrow SD3 reads as SD1 to it) is one line, never SD1's configs."""
    _, file = models["sd3"]
    out = tmp_path / "o"
    assert main(["attention", "--model", str(file), "--prompt", "fox", "--steps", "1", "--out", str(out)]) == 2
    err = _one_line(capsys, "diffusers reads this sd3 file as v1, not one of sd3, sd35_large, sd35_medium")
    assert "--pipeline-config DIR" in err
    assert not out.exists()


def test_configs_from_the_hugging_face_cache_offline(models: dict, tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    """No --pipeline-config: the repository diffusers names for the file (FLUX.1-schnell: no guidance_in), read
    from the Hugging Face cache offline, gives the folder's maps; an --out inside that cached repository is refused."""
    import shutil

    folder, file = models["flux"]
    home = tmp_path / "hf-home"
    repo = home / "hub" / "models--black-forest-labs--FLUX.1-schnell"
    revision = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HOME", str(home))
    args = ["attention", "--prompt", PROMPT, "--steps", "1", "--size", "32x32"]
    assert main([*args, "--model", str(folder), "--out", str(tmp_path / "folder")]) == 0
    assert main([*args, "--model", str(file), "--out", str(tmp_path / "file")]) == 0
    capsys.readouterr()
    torch.testing.assert_close(_maps(tmp_path / "file"), _maps(tmp_path / "folder"), atol=1e-6, rtol=1e-6)
    inside = repo / "snapshots" / revision / "maps"
    assert main([*args, "--model", str(file), "--out", str(inside)]) == 2
    _one_line(capsys, "read by this command")
    assert not inside.exists()


@pytest.mark.parametrize("kind", ["flux", "chroma"])
def test_separate_text_encoder_files(models: dict, kind: str, tmp_path, capsys) -> None:  # noqa: ANN001
    """A transformer-only file, ComfyUI's separate encoder files (`clip_l.safetensors` with transformers' names,
    `t5xxl_fp32.safetensors` with bare T5 names, a `t5_tokenizer/` beside them) and a --pipeline-config folder
    without any text encoder weights: the folder model's maps; --text-encoders on a folder is one line."""
    import shutil

    from tiny_models import hf4_state_dict
    from tiny_pipelines import t5_tokenizer_dir
    from tiny_t5 import state

    folder, file = models[kind]
    configs = tmp_path / "configs"
    shutil.copytree(folder, configs, ignore=lambda d, names: [n for n in names if n.endswith(".safetensors")
                                                              and "text_encoder" in d])
    pipe = getattr(tiny_mmdit, kind)()  # the same seeds: the folder's weights
    encoders = tmp_path / "text_encoders"
    encoders.mkdir()
    shutil.copytree(t5_tokenizer_dir(), encoders / "t5_tokenizer")
    t5 = pipe.text_encoder_2 if kind == "flux" else pipe.text_encoder
    save_file(state(t5), str(encoders / "t5xxl_fp32.safetensors"))
    files = [encoders / "t5xxl_fp32.safetensors"]
    if kind == "flux":
        save_file(hf4_state_dict(pipe.text_encoder), str(encoders / "clip_l.safetensors"))
        files.insert(0, encoders / "clip_l.safetensors")
    args = ["attention", "--prompt", PROMPT, "--steps", "1", "--size", "32x32"]
    assert main([*args, "--model", str(folder), "--out", str(tmp_path / "folder")]) == 0
    assert main([*args, "--model", str(file), "--pipeline-config", str(configs), "--text-encoders", *map(str, files),
                 "--out", str(tmp_path / "file")]) == 0
    capsys.readouterr()
    torch.testing.assert_close(_maps(tmp_path / "file"), _maps(tmp_path / "folder"), atol=1e-6, rtol=1e-6)
    out = tmp_path / "o"
    assert main([*args, "--model", str(folder), "--text-encoders", *map(str, files), "--out", str(out)]) == 2
    _one_line(capsys, "--text-encoders is for a single-file --model")
    assert main([*args, "--model", str(file), "--pipeline-config", str(configs), "--text-encoders",
                 str(tmp_path / "missing.safetensors"), "--out", str(out)]) == 2
    _one_line(capsys, "not a .safetensors file")
    assert not out.exists()


def test_sd3_all_in_one_file_with_its_vae(models: dict, tmp_path, capsys) -> None:  # noqa: ANN001
    """An SD3 file holding transformer, text encoders and VAE (`first_stage_model.*`, LDM names) with a
    configs-only --pipeline-config folder (no weights at all): everything from the file, the folder's image."""
    import shutil

    folder, file = models["sd3"]
    configs = tmp_path / "configs"
    shutil.copytree(folder, configs, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    pipe = tiny_mmdit.sd3_for_single_file()  # the folder's weights (same seed)
    whole = tmp_path / "sd3_incl_clips_vae.safetensors"
    save_file({**tiny_mmdit.sd3_original(pipe), **tiny_mmdit.ldm_vae(pipe.vae)}, str(whole))
    args = ["attention", "--prompt", PROMPT, "--steps", "1", "--size", "32x32"]
    assert main([*args, "--model", str(folder), "--out", str(tmp_path / "folder")]) == 0
    assert main([*args, "--model", str(whole), "--pipeline-config", str(configs), "--out", str(tmp_path / "file")]) == 0
    capsys.readouterr()
    torch.testing.assert_close(_maps(tmp_path / "file"), _maps(tmp_path / "folder"), atol=1e-6, rtol=1e-6)
    assert (tmp_path / "file" / "image.png").read_bytes() == (tmp_path / "folder" / "image.png").read_bytes()
