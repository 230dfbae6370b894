"""Hub ids → local paths through huggingface_hub and its cache (only the text-encoder + tokenizer files).

- `owner/name` → snapshot_download with allow_patterns: a diffusers pipeline's text_encoder*/ and
  tokenizer*/ folders, or an HF model folder's config + safetensors + tokenizer files (never a UNet).
- `owner/name/path/in/repo.safetensors` → hf_hub_download of that one file (e.g. an SDXL single file).
- HF_HUB_OFFLINE (read at call time, not only at import) → cache only; not cached → CheckpointError
  saying to pass a local folder or file instead. HF_HUB_CACHE / HF_HOME pick the cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sdclip.encoder.loading.checkpoint import CheckpointError

ALLOW_PATTERNS = [
    "model_index.json",
    "config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors",
    "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "text_encoder_2/config.json", "text_encoder_2/model.safetensors",
    "tokenizer/*", "tokenizer_2/*",
]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w./ -]+)?$")
_TRUE = {"1", "on", "yes", "true"}


def is_offline() -> bool:
    """HF_HUB_OFFLINE from the environment now (huggingface_hub reads it once at import)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def _cache_dir() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def looks_like_hub_id(source: str) -> bool:
    s = str(source)
    return bool(_HUB_ID.match(s)) and not s.startswith((".", "/", "~")) and "\\" not in s


def resolve(source: str | Path) -> Path:
    """A local path as is; a hub id downloaded (or found in the cache); anything else a CheckpointError."""
    path = Path(os.path.expanduser(str(source)))
    if path.exists():
        return path
    if isinstance(source, Path) or not looks_like_hub_id(str(source)):
        raise CheckpointError(f"{source}: no such file or folder")
    return download(str(source))


def download(hub_id: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError as e:  # pragma: no cover - optional dependency
        raise CheckpointError(f"{hub_id}: looks like a hub id but huggingface_hub is not installed") from e
    parts = hub_id.split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    offline = is_offline()
    try:
        if filename:
            return Path(hf_hub_download(repo, filename, cache_dir=_cache_dir(), local_files_only=offline))
        return Path(
            snapshot_download(repo, allow_patterns=ALLOW_PATTERNS, cache_dir=_cache_dir(), local_files_only=offline)
        )
    except Exception as e:  # LocalEntryNotFoundError, RepositoryNotFoundError, HTTP errors, …
        why = "offline (HF_HUB_OFFLINE is set) and not in the Hugging Face cache" if offline else f"{type(e).__name__}: {e}"
        raise CheckpointError(
            f"{hub_id}: cannot fetch from the Hugging Face hub — {why}. Pass a local path instead: a diffusers "
            "pipeline folder (with text_encoder/), an HF model folder (config.json + model.safetensors) or a "
            "single checkpoint file (.safetensors / .ckpt)."
        ) from e
