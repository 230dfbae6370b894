"""Tiny random LLM text encoders saved as diffusers folders (text_encoder/ + tokenizer/ + model_index.json):
Qwen-Image (Qwen2.5-VL, with a one-block vision tower as the real file has), Z-Image (Qwen3), Lumina 2
(Gemma-2), Flux.2 (Mistral3 with a one-block Pixtral tower, 32 blocks: it reads hidden_states 10, 20, 30),
Flux.2 [klein] (Qwen3ForCausalLM, 30 blocks: 9, 18, 27); byte-level BPE tokenizers trained here, with a
Qwen3-like chat template (a Mistral-like one, BOS added by the tokenizer, for Flux.2). Also the diffusers
pipeline of each, built around the same encoder and tokenizer, as the oracle."""

from __future__ import annotations

import json
from pathlib import Path

import torch

CORPUS = ["a photo of a red fox in the forest", "a cat sitting on a mat, highly detailed", "blurry, low quality",
          "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships",
          "You are an assistant designed to generate superior images with the superior degree of image-text "
          "alignment based on textual prompts or user prompts.", "system user assistant", "(red:1.3) [blue] word"] * 4
QWEN_CHAT = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
             "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and "
             "enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")
#: Mistral Small 3.1's template reduced to what Flux.2 sends: a system and a user message, content as text parts
MISTRAL_CHAT = ("{{ bos_token }}{% for message in messages %}{% if message['content'] is string %}{% set text = "
                "message['content'] %}{% else %}{% set text = message['content'][0]['text'] %}{% endif %}"
                "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]{% else %}"
                "[INST]{{ text }}[/INST]{% endif %}{% endfor %}")
PIPELINES = {"qwen-image": "QwenImagePipeline", "z-image": "ZImagePipeline", "lumina2": "Lumina2Pipeline",
             "flux2": "Flux2Pipeline", "flux2-klein": "Flux2KleinPipeline"}
ENCODERS = {"qwen-image": "Qwen2_5_VLForConditionalGeneration", "z-image": "Qwen3Model", "lumina2": "Gemma2Model",
            "flux2": "Mistral3ForConditionalGeneration", "flux2-klein": "Qwen3ForCausalLM"}
WIDTH, LAYERS = 32, 3
DEPTH = {"flux2": 32, "flux2-klein": 30}  #: past the deepest layer each reads: the blocks after it are never built


def tiny_tokenizer(family: str, chat: bool = True):  # noqa: ANN201
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    gemma, mistral = family == "lumina2", family == "flux2"
    specials = (["<pad>", "<bos>", "<eos>"] if gemma else ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]",
                "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"] if mistral else ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if gemma or mistral:
        bos, bos_id = ("<bos>", 1) if gemma else ("<s>", 1)
        tok.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    kw = (dict(pad_token="<pad>", bos_token="<bos>", eos_token="<eos>") if gemma else
          dict(pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>") if mistral else
          dict(pad_token="<|endoftext|>", eos_token="<|im_end|>"))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="right", **kw)
    fast.add_special_tokens({"additional_special_tokens": specials})
    if chat and not gemma:
        fast.chat_template = MISTRAL_CHAT if mistral else QWEN_CHAT
    return fast


def tiny_encoder(family: str, vocab: int, seed: int = 0, **config: object) -> torch.nn.Module:
    """`config`: text-config settings over the tiny ones (a ComfyUI file's fixed head_dim, rope_theta, …)."""
    import transformers as T

    torch.manual_seed(seed)
    text = {**dict(vocab_size=vocab, hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=DEPTH.get(family, LAYERS),
                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=2048), **config}
    if family == "qwen-image":
        text.pop("head_dim")
        text["rope_parameters"] = {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0}
        config = T.Qwen2_5_VLConfig(text_config=text, vision_config=dict(
            depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=WIDTH, fullatt_block_indexes=[0]))
        model = T.Qwen2_5_VLForConditionalGeneration(config)
    elif family == "z-image":
        model = T.Qwen3Model(T.Qwen3Config(**text))
    elif family == "flux2-klein":
        model = T.Qwen3ForCausalLM(T.Qwen3Config(**text))
    elif family == "flux2":
        config = T.Mistral3Config(text_config=dict(model_type="mistral", **text), vision_config=dict(
            model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            head_dim=8, image_size=32, patch_size=8))
        model = T.Mistral3ForConditionalGeneration(config)
    else:
        model = T.Gemma2Model(T.Gemma2Config(pad_token_id=0, **text))
    with torch.no_grad():  # init's std 0.02 makes every state nearly the same: spread them
        for p in model.parameters():
            p.normal_(0, 0.2) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model.eval()


def tiny_folder(root: Path, family: str, *, chat: bool = True, **config: object) -> Path:
    """A diffusers folder of `family` with a random tiny text encoder and tokenizer."""
    folder = root / family
    tok = tiny_tokenizer(family, chat)
    model = tiny_encoder(family, len(tok), **config)
    model.save_pretrained(folder / "text_encoder")
    tok.save_pretrained(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": PIPELINES[family], "_diffusers_version": "0.42.1",
        "text_encoder": ["transformers", ENCODERS[family]], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
    }))
    return folder


def oracle(folder: Path, family: str):  # noqa: ANN201
    """diffusers' own pipeline around the folder's text encoder and tokenizer (no transformer, VAE, scheduler)."""
    import diffusers
    import transformers as T

    tok = T.AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    model = getattr(T, ENCODERS[family]).from_pretrained(str(folder / "text_encoder")).eval()
    cls = getattr(diffusers, PIPELINES[family])
    return cls(scheduler=None, vae=None, text_encoder=model, tokenizer=tok, transformer=None)
