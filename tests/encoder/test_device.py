"""`resolve_device`: the one `--device` check every model-running command shares (issue 19.6)."""

import pytest

torch = pytest.importorskip("torch")

from sdclip.encoder.device import resolve_device  # noqa: E402


def test_cpu_is_accepted_and_normalised() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(" cpu ") == "cpu"


@pytest.mark.parametrize("name", ["gpu", "GPU", "nvidia"])
def test_a_name_torch_does_not_know_is_one_line_naming_cuda(name: str) -> None:
    with pytest.raises(ValueError) as info:
        resolve_device(name)
    message = str(info.value)
    assert "\n" not in message and "did you mean --device cuda" in message


def test_nonsense_is_one_line() -> None:
    with pytest.raises(ValueError, match="is not a torch device; use cpu, cuda"):
        resolve_device("xyz")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_says_use_cpu(name: str) -> None:
    with pytest.raises(ValueError, match="sees no CUDA GPU; use --device cpu"):
        resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_beyond_the_gpus_is_refused() -> None:
    with pytest.raises(ValueError, match="CUDA GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_mps_where_unavailable() -> None:
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(ValueError, match="MPS is not available"):
        resolve_device("mps")


def test_a_device_sdclip_does_not_run_on() -> None:
    with pytest.raises(ValueError, match="not meta"):
        resolve_device("meta")
