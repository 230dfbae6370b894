"""Hub ids → local paths through huggingface_hub and its cache (only the text-encoder + tokenizer files).

- `owner/name` → snapshot_download with allow_patterns: a diffusers pipeline's text_encoder*/ and
  tokenizer*/ folders, or an HF model folder's config + safetensors + tokenizer files (never a UNet).
- `owner/name/path/in/repo.safetensors` → hf_hub_download of that one file (e.g. an SDXL single file).
- HF_HUB_OFFLINE (read at call time, not only at import) → cache only; not cached → CheckpointError
  saying to pass a local folder or file instead. HF_HUB_CACHE / HF_HOME pick the cache.
- Every failure is one line saying what to do (the hub library's own exceptions span several lines, and its
  retry warnings are held back while it runs).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from sdclip.encoder.loading.checkpoint import CheckpointError

#: what a text-encoder load reads: every text encoder (SD3's T5 included: a pipeline fetched without its
#: text_encoder_3 would encode T5 as zeros without a word) in one file or sharded, every tokenizer, and the
#: transformer's config (the width of SD3's zeros); never a UNet's or a transformer's weights
_ENCODER_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors")
ALLOW_PATTERNS = [
    "model_index.json",
    *_ENCODER_FILES,
    "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model",
    *(f"{folder}/{name}" for folder in ("text_encoder", "text_encoder_2", "text_encoder_3") for name in _ENCODER_FILES),
    "tokenizer/*", "tokenizer_2/*", "tokenizer_3/*", "transformer/config.json",
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


def check_source(source: str | None, flag: str = "--model") -> None:
    """A command's `--model` that is neither a path nor a hub id: one line naming the flag, before anything
    loads (`resolve`'s own message names the path only: a library call has no flags)."""
    if source is None or os.path.lexists(os.path.expanduser(source)):
        return
    if not looks_like_hub_id(source):
        raise ValueError(f"{flag} {source}: no such file or folder (nor a hub id such as owner/name)")


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
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its "Retrying in 1s" lines: the one line below says what happened
    try:
        if filename:
            return Path(hf_hub_download(repo, filename, cache_dir=_cache_dir(), local_files_only=offline))
        return Path(
            snapshot_download(repo, allow_patterns=ALLOW_PATTERNS, cache_dir=_cache_dir(), local_files_only=offline)
        )
    except Exception as e:  # LocalEntryNotFoundError, RepositoryNotFoundError, HTTP errors, …
        raise CheckpointError(f"{hub_id}: cannot fetch from the Hugging Face hub — {_why(e, offline, filename)}") from None
    finally:
        hub_log.setLevel(level)


_LOCAL = ("a local path: a diffusers pipeline folder (with text_encoder/), an HF model folder (config.json + "
          "model.safetensors) or a checkpoint file")


def _cache_shown() -> str:
    if _cache_dir():
        return _cache_dir()  # type: ignore[return-value]
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover
        return "the Hugging Face cache"


def _cause(e: BaseException) -> str:
    """The innermost cause of a hub error in one line ("ConnectError: [Errno 111] Connection refused")."""
    seen = set()
    while (e.__cause__ or e.__context__) is not None and id(e) not in seen:
        seen.add(id(e))
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def _why(e: BaseException, offline: bool, filename: str) -> str:
    """The hub library's multi-line exception as one line saying what to do."""
    names = [c.__name__ for c in type(e).__mro__]
    cache = _cache_shown()
    if offline:
        return (f"offline (HF_HUB_OFFLINE is set) and not in the cache ({cache}): unset HF_HUB_OFFLINE to download "
                f"it once, or pass {_LOCAL}")
    if "LocalEntryNotFoundError" in names or "OfflineModeIsEnabled" in names:
        return (f"the hub cannot be reached ({_cause(e)}) and it is not in the cache ({cache}): connect and retry "
                f"(after one download, HF_HUB_OFFLINE=1 reads the cache), or pass {_LOCAL}")
    if "GatedRepoError" in names:
        return "a gated repository: accept its terms on huggingface.co, then log in (`hf auth login`) and retry"
    if "RepositoryNotFoundError" in names:
        return "no such repository (or a private one: log in with `hf auth login`); check the id, or pass " + _LOCAL
    if "RevisionNotFoundError" in names:
        return "no such revision in the repository"
    if "EntryNotFoundError" in names:
        return f"the repository has no file {filename!r}" if filename else "a file the load needs is missing there"
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {text[:200]}" + (f"; pass {_LOCAL} instead" if text else "")
