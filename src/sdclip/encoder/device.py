"""One check for `--device`, shared by every command that runs a model (encode, embed, serve, attention).

Why: torch's own failures for a device this machine lacks are a `RuntimeError` ("Expected one of cpu, cuda, …"
for `gpu`) or an `AssertionError` ("Torch not compiled with CUDA enabled") raised deep inside a model load,
after minutes of work and sometimes after an output folder was made. Checking the name first turns each into
one line that says what to pass instead, before anything is loaded or written.
"""

from __future__ import annotations

#: names people type that torch does not know, and what they most likely meant
_ALIASES = {"gpu": "cuda", "nvidia": "cuda", "metal": "mps", "apple": "mps"}


def resolve_device(name: str) -> str:
    """`name` checked against this machine: the torch device string to use, or a one-line `ValueError`.

    Refuses names torch cannot parse (`gpu` → "did you mean cuda"), CUDA when this torch sees no GPU (or
    fewer GPUs than the index asks for), and MPS where it is unavailable.
    """
    import torch

    text = str(name).strip()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        hint = _ALIASES.get(text.split(":")[0].lower())
        meant = f" (did you mean --device {hint}?)" if hint else ""
        raise ValueError(
            f"--device {name!r} is not a torch device{meant}; use cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {text}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {text}: this machine has {count} CUDA GPU(s) (cuda:0 … cuda:{count - 1})")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"--device {text}: MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"--device {text}: sdclip runs on cpu, cuda or mps, not {device.type}")
    return str(device)
