"""Suite-wide settings. Torch is optional here: the torch-free stages' tests (syntax, tokenizer, layout,
prepare, conventions, `inspect`) also run in an environment without it (see .ci/run).

The test models are tiny: with more than one intra-op thread, torch spends far longer synchronising
threads than computing (measured here: a tiny linear layer 0.3 ms on one thread, 28–45 ms on two under
load), so the suite runs single-threaded. Real-size tests that want both cores raise it locally.
"""

import importlib.util

import pytest

if importlib.util.find_spec("torch") is not None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(params=[False, True], ids=["stock", "onednn"])
def onednn(request, monkeypatch) -> bool:
    """Runs a test under each CPU linear path of sdclip.encoder.kernels (oneDNN where this torch build
    and CPU have it)."""
    from sdclip.encoder import kernels

    if request.param and not kernels.ONEDNN_AVAILABLE:
        pytest.skip("no oneDNN linear in this torch build / CPU")
    monkeypatch.setattr(kernels, "ONEDNN", request.param)
    return request.param
