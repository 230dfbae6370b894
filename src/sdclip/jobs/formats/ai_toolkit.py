"""`--format ai-toolkit`: ostris/ai-toolkit's text-embedding cache, read at commit
27a03a91f23eb1b757d5ec2e80ee3e129cfcc350 (`toolkit/dataloader_mixins.py`: `_build_text_embedding_path`,
`get_text_embedding_info_dict`; `toolkit/prompt_utils.py`: `PromptEmbeds.save` / `load`;
`toolkit/stable_diffusion_model.py`: `text_embedding_space_version` is the model's `arch`).

Per image: `{image folder}/_t_e_cache/{stem}_{hash}.safetensors`, hash = urlsafe base64 of the md5 of
`json.dumps({"caption", "text_embedding_space_version": arch, "text_embedding_version": 1}, sort_keys=True)`
with `=` stripped, so an edited caption is a new file. Keys (`PromptEmbeds.save`, `encode_prompt` of one
caption keeps the batch axis): `text_embed` [1, N, D], `pooled_embed` [1, P], and for Flux `attention_mask`
[1, 512] (the T5 tokenizer's mask, int64).
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
from collections import OrderedDict

from sdclip.jobs.formats.base import FamilyTable, Format, Key, one_row, safetensors_bytes, stem

COMMIT = "27a03a91f23eb1b757d5ec2e80ee3e129cfcc350"
TEXT_EMBEDDING_VERSION = 1
CACHE_DIR = "_t_e_cache"
_KEYS = (Key("text_embed", "embeds", batch=True), Key("pooled_embed", "pooled", batch=True))
#: family (the model's `arch`, hashed into the name) → the file's tensors
TABLES = {
    "sdxl": FamilyTable("sdxl", _KEYS),
    "sd3": FamilyTable("sd3", _KEYS, fixed_t5=True),
    "flux": FamilyTable("flux", (*_KEYS, Key("attention_mask", "mask", role=1, batch=True)), fixed_t5=True),
}


def cache_rel(rel: str, caption: str, arch: str) -> str:
    """The image's cache path relative to the image folder (`_build_text_embedding_path`)."""
    info = OrderedDict([("caption", caption), ("text_embedding_space_version", arch),
                        ("text_embedding_version", TEXT_EMBEDDING_VERSION)])
    digest = hashlib.md5(json.dumps(info, sort_keys=True).encode("utf-8")).digest()
    h = base64.urlsafe_b64encode(digest).decode("ascii").replace("=", "")
    folder = posixpath.dirname(rel)
    name = f"{posixpath.basename(stem(rel))}_{h}.safetensors"
    return posixpath.join(folder, CACHE_DIR, name) if folder else posixpath.join(CACHE_DIR, name)


def _name(where: str, caption: str, family: str, table: FamilyTable) -> str:
    return cache_rel(where, caption, table.tag)


def _check(family: str, source_format: str, rows: int, options: dict) -> None:
    one_row(family, rows, "ai-toolkit")


AI_TOOLKIT = Format("ai-toolkit", TABLES, (".safetensors",), "images", _name, safetensors_bytes, _check,
                    trainer="ai-toolkit")
