"""CLIP tokenizer folders as transformers saves them, written from the packaged OpenAI vocabulary (torch-free)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from transformers.convert_slow_tokenizer import bytes_to_unicode

VOCAB_GZ = Path(__file__).resolve().parents[1] / "src" / "sdclip" / "data" / "bpe_simple_vocab_16e6.txt.gz"


def write_tokenizer(folder: Path, pad: str = "<|endoftext|>") -> Path:
    """vocab.json + merges.txt from the packaged OpenAI vocabulary (SD2/SDXL tokenizer_2: pad "!")."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(VOCAB_GZ, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    base = list(bytes_to_unicode().values())  # transformers' own byte map: an independent source
    vocab = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps({**special, "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}))
    return folder
