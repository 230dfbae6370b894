"""Our CLIP text transformer against transformers: layers, clip skip, pooling, textual inversion, dtypes."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import REAL, reference, sample_ids, save_state_dict, single_file_state_dict, tiny_family, tiny_model

from sdclip.encoder import CLIPTextEncoder, LayerSelect, load_text_encoders
from sdclip.encoder.config import VIT_BIGG_CONFIG, VIT_H_CONFIG, VIT_L_CONFIG, EncoderConfig

TOL = 1e-5


def _load(tmp_path, family="sd1", seed=0):
    fam = tiny_family(family, seed)
    path = save_state_dict(single_file_state_dict(fam), tmp_path / "m.safetensors")
    return fam, load_text_encoders(path)


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return _load(tmp_path_factory.mktemp("sd1"))


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return _load(tmp_path_factory.mktemp("sdxl"), "sdxl")


# ---- layer selection ---------------------------------------------------------------------------

XL, SD2 = LayerSelect(1, False), LayerSelect(1, True)  # the SDXL and SD2 families' default layers


def test_conventions_follow_the_reference_table():
    assert LayerSelect.a1111(1) == LayerSelect.comfy(-1) == LayerSelect.diffusers(None) == LayerSelect(0, True)
    assert LayerSelect.a1111(2) == LayerSelect.comfy(-2) == LayerSelect.diffusers(1) == LayerSelect(1, True)
    assert LayerSelect.diffusers(None, XL) == LayerSelect.diffusers(0, XL) == XL
    assert LayerSelect.diffusers(2, XL) == LayerSelect(3, False)
    assert LayerSelect.diffusers(None, SD2) == SD2 and LayerSelect.diffusers(1, SD2) == LayerSelect(2, True)


@pytest.mark.parametrize("bad", [lambda: LayerSelect.a1111(0), lambda: LayerSelect.comfy(0), lambda: LayerSelect(-1),
                                 lambda: LayerSelect.diffusers(-1), lambda: LayerSelect.a1111(True)])
def test_bad_conventions_are_refused(bad):
    with pytest.raises(ValueError):
        bad()


@pytest.mark.parametrize("clip_skip", [None, 1, 2])
def test_diffusers_sd_clip_skip_matches_transformers_indices(sd1, clip_skip):
    """diffusers SD: hidden_states[-(k+1)] then final_layer_norm."""
    fam, loaded = sd1
    ids = sample_ids(2)
    ref = reference(fam.models[0], ids)
    want = fam.models[0].final_layer_norm(ref["hidden_states"][-((clip_skip or 0) + 1)])
    got = loaded.encoders[0](ids, LayerSelect.diffusers(clip_skip)).hidden
    assert (got - want).abs().max() <= TOL


@pytest.mark.parametrize("clip_skip", [None, 1, 2])
def test_diffusers_sdxl_clip_skip_matches_transformers_indices(sdxl, clip_skip):
    """diffusers SDXL: hidden_states[-(N+2)], no final LN, both encoders."""
    fam, loaded = sdxl
    ids = sample_ids(2)
    for enc, model in zip(loaded.encoders, fam.models):
        want = reference(model, ids)["hidden_states"][-((clip_skip or 0) + 2)]
        got = enc(ids, LayerSelect.diffusers(clip_skip, XL)).hidden
        assert (got - want).abs().max() <= TOL


def test_a1111_and_comfy_clip_skip_use_final_norm(sd1):
    fam, loaded = sd1
    ids = sample_ids(2)
    hs = reference(fam.models[0], ids)["hidden_states"]
    for n in (1, 2, 3):
        want = fam.models[0].final_layer_norm(hs[-n])
        for sel in (LayerSelect.a1111(n), LayerSelect.comfy(-n)):
            assert (loaded.encoders[0](ids, sel).hidden - want).abs().max() <= TOL


def test_skipped_blocks_never_run(sd1):
    _, loaded = sd1
    enc = loaded.encoders[0]
    calls: list[int] = []
    hooks = [b.register_forward_hook(lambda m, i, o, n=n: calls.append(n)) for n, b in enumerate(enc.blocks)]
    try:
        enc(sample_ids(1), LayerSelect(skip=2))
        assert calls == list(range(len(enc.blocks) - 2))
        calls.clear()
        enc(sample_ids(1), LayerSelect(skip=2), pooled=True)  # the pooled vector needs every block
        assert calls == list(range(len(enc.blocks)))
    finally:
        for h in hooks:
            h.remove()


def test_skip_beyond_depth_is_an_error(sd1):
    enc = sd1[1].encoders[0]
    with pytest.raises(ValueError, match="cannot skip"):
        enc(sample_ids(1), LayerSelect(skip=enc.config.depth + 1))
    # skip == depth: the embeddings themselves (allowed, no block runs)
    assert enc(sample_ids(1), LayerSelect(skip=enc.config.depth, final_norm=False)).hidden.shape[1] == 77


def test_pooled_with_skip_still_reads_the_final_layer(sdxl):
    fam, loaded = sdxl
    ids = sample_ids(3)
    ref = reference(fam.models[1], ids)
    out = loaded.encoders[1](ids, LayerSelect.diffusers(None, XL), pooled=True)
    assert (out.hidden - ref["hidden_states"][-2]).abs().max() <= TOL
    assert (out.pooled - ref["pooled"]).abs().max() <= TOL
    assert out.pooled.shape == (3, fam.models[1].config.projection_dim)


# ---- inputs --------------------------------------------------------------------------------------

def test_short_rows_equal_transformers(sd1):
    fam, loaded = sd1
    ids = sample_ids(2, length=12)
    ref = reference(fam.models[0], ids)
    out = loaded.encoders[0](ids, pooled=True)
    assert out.hidden.shape == (2, 12, 128)
    assert (out.hidden - ref["last"]).abs().max() <= TOL
    assert (out.pooled - ref["pooled"]).abs().max() <= TOL


def test_textual_inversion_vectors_and_first_eos_pooling(sd1):
    """ids >= 49408 read `vectors`; transformers sees the same vectors appended to its token table
    (with eos_token_id=49407, i.e. first-EOS pooling): everything must agree."""
    fam, loaded = sd1
    enc = loaded.encoders[0]
    vectors = torch.randn(3, 128, generator=torch.Generator().manual_seed(3)) * 0.05
    ids = sample_ids(2)
    ids[0, 3:6] = torch.tensor([49408, 49409, 49410])
    ids[1, 1] = 49410
    hf = tiny_model("clip-vit-l-14", 0)
    table = hf.get_input_embeddings().weight
    bigger = torch.nn.Embedding(49411, 128)
    with torch.no_grad():
        bigger.weight.copy_(torch.cat([table, vectors]))
    hf.set_input_embeddings(bigger)
    ref = reference(hf, ids)
    out = enc(ids, vectors=vectors, pooled=True)
    assert (out.hidden - ref["last"]).abs().max() <= TOL
    assert (out.pooled - ref["pooled"]).abs().max() <= TOL
    # the pooled row is the final-LN output at the FIRST 49407, not at argmax(ids) (a vector id)
    first_eos = (ids[0] == 49407).nonzero()[0, 0]
    assert torch.equal(out.pooled[0], out.hidden[0, first_eos])
    assert not torch.allclose(out.pooled[0], out.hidden[0, int(ids[0].argmax())])


@pytest.mark.parametrize("case, match", [
    ("vector_without_vectors", "no textual-inversion vectors"),
    ("vector_out_of_range", "only 1 given"),
    ("negative", "negative token id"),
    ("too_long", "positions"),
    ("not_2d", r"\[R, L\]"),
    ("pooled_without_eos", "needs an EOS"),
    ("vectors_wrong_width", "vectors must be"),
])
def test_bad_inputs_are_clear_errors(sd1, case, match):
    enc = sd1[1].encoders[0]
    ids, kw = sample_ids(1), {}
    if case == "vector_without_vectors":
        ids[0, 2] = 49408
    elif case == "vector_out_of_range":
        ids[0, 2] = 49409
        kw["vectors"] = torch.zeros(1, 128)
    elif case == "negative":
        ids[0, 2] = -1
    elif case == "too_long":
        ids = torch.cat([ids, ids], 1)
    elif case == "not_2d":
        ids = ids[0]
    elif case == "pooled_without_eos":
        ids[ids == 49407] = 320
        kw["pooled"] = True
    elif case == "vectors_wrong_width":
        ids[0, 2] = 49408
        kw["vectors"] = torch.zeros(1, 64)
    with pytest.raises(ValueError, match=match):
        enc(ids, **kw)


# ---- dtypes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_stays_close(tmp_path, dtype):
    fam = tiny_family("sdxl")
    path = save_state_dict(single_file_state_dict(fam), tmp_path / "m.safetensors")
    full = load_text_encoders(path)
    half = load_text_encoders(path, dtype=dtype)
    ids = sample_ids(3)
    for a, b in zip(full.encoders, half.encoders):
        assert b.token_embedding.weight.dtype == dtype
        x = a(ids, LayerSelect(1, False), pooled=True)
        y = b(ids, LayerSelect(1, False), pooled=True)
        assert y.hidden.dtype == dtype
        for u, v in ((x.hidden, y.hidden), (x.pooled, y.pooled)):
            cos = torch.nn.functional.cosine_similarity(u.flatten(1), v.float().flatten(1))
            assert cos.min() >= 0.999


# ---- configs ---------------------------------------------------------------------------------------

def test_presets_and_config_checks():
    assert (VIT_L_CONFIG.width, VIT_L_CONFIG.depth, VIT_L_CONFIG.heads, VIT_L_CONFIG.act) == (768, 12, 12, "quick_gelu")
    assert (VIT_H_CONFIG.width, VIT_H_CONFIG.depth, VIT_H_CONFIG.act, VIT_H_CONFIG.with_(layers=23).layers) == (1024, 24, "gelu", 23)
    assert (VIT_BIGG_CONFIG.width, VIT_BIGG_CONFIG.depth, VIT_BIGG_CONFIG.projection) == (1280, 32, 1280)
    with pytest.raises(ValueError):
        EncoderConfig("x", width=100, depth=2, heads=3, mlp=4, act="gelu")
    with pytest.raises(ValueError):
        VIT_H_CONFIG.with_(layers=25)
    with pytest.raises(ValueError):
        EncoderConfig("x", width=64, depth=2, heads=1, mlp=4, act="relu")


def test_random_model_runs_without_weights():
    """The bare module (no checkpoint) is usable for shape work."""
    enc = CLIPTextEncoder(VIT_L_CONFIG.with_(width=64, heads=1, mlp=128, depth=2, name="t")).eval()
    with torch.no_grad():
        out = enc(sample_ids(2), pooled=True)
    assert out.hidden.shape == (2, 77, 64) and out.pooled.shape == (2, 64)


@pytest.fixture
def close(onednn: bool):
    """Real-size parity under both CPU matmul paths (the `onednn` fixture). Our attention and activation
    kernels (and oneDNN's summation order) differ from transformers' by fp32 rounding, which grows with
    the values through a 12–32-layer stack: the bound is 1e-5 of the largest |value| (1e-5 absolute below
    1). Measured at ViT-L size: 8e-7 (stock) and 1.8e-6 (oneDNN, quick_gelu fused) of it."""

    def check(got: torch.Tensor, want: torch.Tensor, what: object = "") -> None:
        bound = TOL * max(1.0, float(want.abs().max()))
        err = float((got - want).abs().max())
        assert err <= bound, ("onednn" if onednn else "stock", what, err, bound)

    return check


@pytest.mark.slow
def test_real_size_vit_l_equals_transformers(tmp_path, close):
    """Real CLIP ViT-L/14 shapes (12 heads of 64, 12 layers) through the SD1 single-file layout."""
    from tiny_models import TinyFamily

    fam = TinyFamily("sd1", (tiny_model("clip-vit-l-14", 0, REAL),))
    path = save_state_dict(single_file_state_dict(fam), tmp_path / "sd1.safetensors")
    loaded = load_text_encoders(path)
    enc = loaded.encoders[0]
    assert enc.config.name == "clip-vit-l-14" and enc.config.heads == 12
    ids = sample_ids(2)
    ref = reference(fam.models[0], ids)
    hs = enc.hidden_states(ids)
    for i in range(13):
        close(hs[i], ref["hidden_states"][i], i)
    out = enc(ids, pooled=True)
    close(out.hidden, ref["last"], "last")
    close(out.pooled, ref["pooled"], "pooled")


@pytest.mark.slow
def test_real_size_vit_h_equals_transformers(tmp_path, close):
    """Real OpenCLIP ViT-H/14 shapes (16 heads, 24 layers, gelu) through the SD2 single-file layout
    (open_clip keys, fused in_proj): SD2 reads the penultimate layer + final LN."""
    from tiny_models import TinyFamily

    fam = TinyFamily("sd2", (tiny_model("openclip-vit-h-14", 0, REAL),))
    path = save_state_dict(single_file_state_dict(fam), tmp_path / "sd2.safetensors")
    enc = load_text_encoders(path).encoders[0]
    assert enc.config.name == "openclip-vit-h-14" and (enc.config.heads, enc.config.depth) == (16, 24)
    ids = sample_ids(2)
    ref = reference(fam.models[0], ids)
    out = enc(ids, LayerSelect.a1111(2), pooled=True)
    close(out.hidden, fam.models[0].final_layer_norm(ref["hidden_states"][-2]), "penultimate + LN")
    close(out.pooled, ref["pooled"], "pooled")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(tmp_path, dtype):
    fam = tiny_family("sdxl")
    path = save_state_dict(single_file_state_dict(fam), tmp_path / "m.safetensors")
    cpu = load_text_encoders(path)
    gpu = load_text_encoders(path, dtype=dtype, device="cuda")
    ids = sample_ids(3)
    for a, b in zip(cpu.encoders, gpu.encoders):
        x = a(ids, LayerSelect(1, False), pooled=True)
        y = b(ids.cuda(), LayerSelect(1, False), pooled=True)
        assert y.hidden.device.type == "cuda"
        for u, v in ((x.hidden, y.hidden), (x.pooled, y.pooled)):
            cos = torch.nn.functional.cosine_similarity(u.flatten(1), v.float().cpu().flatten(1))
            assert cos.min() >= 0.999


@pytest.mark.slow
def test_real_width_bigg_equals_transformers(tmp_path, close):
    """OpenCLIP ViT-bigG/14 at real width (1280, 20 heads, MLP 5120, 1280×1280 projection), 4 of its 32
    layers to stay fast, through the SDXL single-file layout (embedders.1, text_projection as x @ W)."""
    from tiny_models import TinyFamily

    sizes = {"clip-vit-l-14": REAL["clip-vit-l-14"] | {"num_hidden_layers": 2}, "openclip-vit-bigg-14": REAL["openclip-vit-bigg-14"] | {"num_hidden_layers": 4}}
    fam = TinyFamily("sdxl", (tiny_model("clip-vit-l-14", 0, sizes), tiny_model("openclip-vit-bigg-14", 1, sizes)))
    enc = load_text_encoders(save_state_dict(single_file_state_dict(fam), tmp_path / "xl.safetensors")).encoders[1]
    assert (enc.config.heads, enc.config.projection, enc.config.act) == (20, 1280, "gelu")
    ids = sample_ids(2)
    ref = reference(fam.models[1], ids)
    out = enc(ids, LayerSelect.diffusers(None, XL), pooled=True)
    close(out.hidden, ref["hidden_states"][-2], "penultimate")
    close(out.pooled, ref["pooled"], "pooled")


def test_attention_mask_equals_transformers(sd1):
    """compel's down-weighting re-encodes rows with a fragment's keys masked out: must equal HF exactly."""
    fam, loaded = sd1
    ids = sample_ids(2, seed=3)
    mask = torch.ones_like(ids)
    mask[0, 3:6] = 0
    mask[1, 10:12] = 0
    with torch.no_grad():
        want = fam.models[0](ids, attention_mask=mask).last_hidden_state
    got = loaded.encoders[0](ids, attention_mask=mask).hidden
    assert (got - want).abs().max() <= TOL
    unmasked = loaded.encoders[0](ids).hidden
    assert (got - unmasked).abs().max() > 1e-3  # the mask really changes the encoding
    with pytest.raises(ValueError, match="attention_mask"):
        loaded.encoders[0](ids, attention_mask=mask[:, :10])


def test_gradients_reach_textual_inversion_vectors(sd1):
    """Training a textual inversion backpropagates through the encoder: with a vector that needs a gradient
    the blocks run out of place and through F.linear (oneDNN's op has no backward), with the same result."""
    fam, loaded = sd1
    enc = loaded.encoders[0]
    ids = sample_ids(2, seed=5)
    ids[:, 3] = enc.config.vocab  # the first textual-inversion slot
    vec = torch.randn(1, enc.config.width, requires_grad=True)
    with torch.enable_grad():
        out = enc(ids, vectors=vec).hidden
        out.square().sum().backward()
    assert vec.grad is not None and vec.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(out.detach(), enc(ids, vectors=vec.detach()).hidden, rtol=1e-5, atol=1e-5)
    # and the gradient is right: float64 copy, numerical check on a few coordinates of the vector
    enc64 = copy.deepcopy(enc).double()
    v64 = torch.randn(1, enc.config.width, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda v: enc64(ids[:1], vectors=v).hidden[0, 3:6].sum(), (v64,), eps=1e-6, atol=1e-5)


def test_fused_quick_gelu_follows_weight_changes(tmp_path, onednn):
    """With oneDNN, quick_gelu runs in the fc GEMM on rescaled LN/bias vectors cached per block; editing a
    weight in place (as load_state_dict does) is seen by the next call, and the result stays equal to
    transformers' own MLP on the same weights."""
    fam = tiny_family("sd1")
    enc = load_text_encoders(save_state_dict(single_file_state_dict(fam), tmp_path / "m.safetensors")).encoders[0]
    hf = fam.models[0]
    ids = sample_ids(2, seed=6)
    with torch.no_grad():  # sdclip encodes with autograd off: the in-place, fused path
        enc(ids)  # fills the cache
        for ours, theirs in ((enc.blocks[0].ln_2.bias, hf.encoder.layers[0].layer_norm2.bias),
                             (enc.blocks[1].mlp.fc.bias, hf.encoder.layers[1].mlp.fc1.bias)):
            ours.add_(0.5)
            theirs.add_(0.5)
        want = hf(ids).last_hidden_state
        assert (enc(ids).hidden - want).abs().max() <= TOL


def test_packed_weights_give_the_same_encoding(sdxl, onednn):
    """pack_weights keeps oneDNN-packed copies beside the weights: same hidden and pooled outputs (to fp32
    rounding), same state dict, copies still work; a weight edited in place is repacked; pack_weights(False)
    drops them."""
    fam, loaded = sdxl
    enc = loaded.encoders[1]
    ids = sample_ids(3, seed=7)
    sel = LayerSelect(1, False)
    keys = list(enc.state_dict())
    with torch.no_grad():
        want = enc(ids, sel, pooled=True)
        enc.pack_weights()
        try:
            got = enc(ids, sel, pooled=True)
            qkv = enc.blocks[0].attn.qkv
            assert (qkv._packed is not None and qkv._packed[1] is not None) == onednn
            assert list(enc.state_dict()) == keys
            for a, b in ((got.hidden, want.hidden), (got.pooled, want.pooled)):
                assert (a - b).abs().max() <= TOL
            # a packed encoder copies (the packed tensors are remade, not copied)
            assert torch.equal(copy.deepcopy(enc)(ids, sel).hidden, got.hidden)
            qkv.weight.mul_(0.5)
            edited = enc(ids, sel, pooled=True).hidden
            enc.pack_weights(False)
            assert qkv._packed is None
            assert (edited - enc(ids, sel, pooled=True).hidden).abs().max() <= TOL
            assert (edited - want.hidden).abs().max() > 1e-3
        finally:
            enc.pack_weights(False)
            qkv.weight.mul_(2.0)
