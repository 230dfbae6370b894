"""kohya-ss/sd-scripts `--weighted_captions`, transliterated (torch only) from its source at commit
48d368fa557731ad0488c07304dfeba8c07910eb (2026-02-16):

- `library/strategy_base.py` `TokenizeStrategy._re_attention`, `_get_weighted_input_ids` (its inner
  `parse_prompt_attention`, `get_prompts_with_weights`, `pad_tokens_and_weights`) and `_get_input_ids`
  (the 75-token chunking of `--max_token_length` 150 / 225, both the v1 and the v2/SDXL branch);
- `library/strategy_sd.py` `SdTokenizeStrategy` (max_length + 2) and `SdTextEncodingStrategy.encode_tokens` /
  `encode_tokens_with_weights`;
- `library/strategy_sdxl.py` `SdxlTokenizeStrategy` (tokenizer2.pad_token_id = 0) and
  `SdxlTextEncodingStrategy._pool_workaround` / `_get_hidden_states_sdxl` / `encode_tokens_with_weights`.

The statements keep sd-scripts' order and names; what is left out is logging, device moves and the caching
classes. Two stand-ins, because the tests' models are tiny: `hidden_states[11]` of SDXL's 12-layer ViT-L (its
penultimate layer) is `SDXL_TE1_LAYER` = -2 here, and SD2's text encoder is the checkpoint sd-scripts builds,
the architecture minus its last block (`model_util.py`: `num_hidden_layers=23` of 24), made by `sd2_stored`.
The v2 branch's "copy the next <PAD>" loop compares an id with the *string* `tokenizer.eos_token`, which is never
equal (a tensor compared with a str is False), so it never runs; it is kept as written.
"""

from __future__ import annotations

import copy
import re
from typing import Optional

import torch

SDXL_TE1_LAYER = -2  #: sd-scripts reads hidden_states[11] of the 12-layer ViT-L: the penultimate layer

_re_attention = re.compile(
    r"""\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:([+-]?[.\d]+)\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)


class Tok:
    """What sd-scripts reads of a transformers CLIPTokenizer: `tok(text).input_ids` and four attributes."""

    def __init__(self, hf, pad_token_id: int):
        self.hf = hf
        self.bos_token_id, self.eos_token_id = hf.bos_token_id, hf.eos_token_id
        self.pad_token_id = pad_token_id
        self.eos_token = hf.eos_token
        self.model_max_length = 77

    def __call__(self, text: str):
        return self.hf(text)


def parse_prompt_attention(text):
    res = []
    round_brackets = []
    square_brackets = []

    round_bracket_multiplier = 1.1
    square_bracket_multiplier = 1 / 1.1

    def multiply_range(start_position, multiplier):
        for p in range(start_position, len(res)):
            res[p][1] *= multiplier

    for m in _re_attention.finditer(text):
        text = m.group(0)
        weight = m.group(1)

        if text.startswith("\\"):
            res.append([text[1:], 1.0])
        elif text == "(":
            round_brackets.append(len(res))
        elif text == "[":
            square_brackets.append(len(res))
        elif weight is not None and len(round_brackets) > 0:
            multiply_range(round_brackets.pop(), float(weight))
        elif text == ")" and len(round_brackets) > 0:
            multiply_range(round_brackets.pop(), round_bracket_multiplier)
        elif text == "]" and len(square_brackets) > 0:
            multiply_range(square_brackets.pop(), square_bracket_multiplier)
        else:
            res.append([text, 1.0])

    for pos in round_brackets:
        multiply_range(pos, round_bracket_multiplier)

    for pos in square_brackets:
        multiply_range(pos, square_bracket_multiplier)

    if len(res) == 0:
        res = [["", 1.0]]

    # merge runs of identical weights
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1

    return res


def get_prompts_with_weights(tokenizer, text: str, max_length: int):
    truncated = False
    texts_and_weights = parse_prompt_attention(text)
    tokens = []
    weights = []
    for word, weight in texts_and_weights:
        token = tokenizer(word).input_ids[1:-1]
        tokens += token
        weights += [weight] * len(token)
        if len(tokens) > max_length:
            truncated = True
            break
    if len(tokens) > max_length:
        truncated = True
        tokens = tokens[:max_length]
        weights = weights[:max_length]
    return tokens, weights


def pad_tokens_and_weights(tokens, weights, max_length, bos, eos, pad):
    tokens = [bos] + tokens + [eos] + [pad] * (max_length - 2 - len(tokens))
    weights = [1.0] + weights + [1.0] * (max_length - 1 - len(weights))
    return tokens, weights


def get_weighted_input_ids(tokenizer, text: str, max_length: Optional[int] = None):
    if max_length is None:
        max_length = tokenizer.model_max_length
    tokens, weights = get_prompts_with_weights(tokenizer, text, max_length - 2)
    tokens, weights = pad_tokens_and_weights(
        tokens, weights, max_length, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    return torch.tensor(tokens).unsqueeze(0), torch.tensor(weights).unsqueeze(0)


def get_input_ids(tokenizer, text: str, max_length: Optional[int] = None, weighted: bool = False):
    """`_get_input_ids`; unweighted, transformers pads with `tokenizer.hf`'s own pad id (set it as sd-scripts does)."""
    if max_length is None:
        max_length = tokenizer.model_max_length - 2
    if weighted:
        input_ids, weights = get_weighted_input_ids(tokenizer, text, max_length)
    else:
        input_ids = tokenizer.hf(text, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt").input_ids

    if max_length > tokenizer.model_max_length:
        input_ids = input_ids.squeeze(0)
        iids_list = []
        if tokenizer.pad_token_id == tokenizer.eos_token_id:
            # v1
            for i in range(1, max_length - tokenizer.model_max_length + 2, tokenizer.model_max_length - 2):
                ids_chunk = (
                    input_ids[0].unsqueeze(0),
                    input_ids[i : i + tokenizer.model_max_length - 2],
                    input_ids[-1].unsqueeze(0),
                )
                ids_chunk = torch.cat(ids_chunk)
                iids_list.append(ids_chunk)
        else:
            # v2 or SDXL
            for i in range(1, max_length - tokenizer.model_max_length + 2, tokenizer.model_max_length - 2):
                ids_chunk = (
                    input_ids[0].unsqueeze(0),
                    input_ids[i : i + tokenizer.model_max_length - 2],
                    input_ids[-1].unsqueeze(0),
                )
                ids_chunk = torch.cat(ids_chunk)
                if ids_chunk[-2] != tokenizer.eos_token_id and ids_chunk[-2] != tokenizer.pad_token_id:
                    ids_chunk[-1] = tokenizer.eos_token_id
                if ids_chunk[1] == tokenizer.pad_token_id:
                    ids_chunk[1] = tokenizer.eos_token_id
                iids_list.append(ids_chunk)

        input_ids = torch.stack(iids_list)  # 3,77

        if weighted:
            weights = weights.squeeze(0)
            new_weights = torch.ones(input_ids.shape)
            for i in range(1, max_length - tokenizer.model_max_length + 2, tokenizer.model_max_length - 2):
                b = i // (tokenizer.model_max_length - 2)
                new_weights[b, 1 : 1 + tokenizer.model_max_length - 2] = weights[i : i + tokenizer.model_max_length - 2]
            weights = new_weights

    if weighted:
        return input_ids, weights
    return input_ids


def strategy_max_length(tokenizer, max_token_length: Optional[int]) -> int:
    """`SdTokenizeStrategy` / `SdxlTokenizeStrategy.__init__`: None → model_max_length, else + 2."""
    return tokenizer.model_max_length if max_token_length is None else max_token_length + 2


def tokenize_with_weights(tokenizers, texts, max_token_length: Optional[int]):
    """[tokens per tokenizer (b, n, 77)], [weights per tokenizer (b, n, 77)]."""
    tokens_out, weights_out = [], []
    for tokenizer in tokenizers:
        max_length = strategy_max_length(tokenizer, max_token_length)
        pairs = [get_input_ids(tokenizer, t, max_length, weighted=True) for t in texts]
        tokens_out.append(torch.stack([p[0] for p in pairs], dim=0))
        weights_out.append(torch.stack([p[1] for p in pairs], dim=0))
    return tokens_out, weights_out


def tokenize(tokenizers, texts, max_token_length: Optional[int]):
    """`SdxlTokenizeStrategy.tokenize` (no --weighted_captions): [tokens per tokenizer (b, n, 77)]."""
    return [torch.stack([get_input_ids(tok, t, strategy_max_length(tok, max_token_length)) for t in texts], dim=0)
            for tok in tokenizers]


# ------------------------------------------------------------------------------------------ SD1 / SD2


def _text_model(model):
    """transformers 4's `CLIPTextModel.text_model` (sd-scripts' spelling); transformers 5 flattened it."""
    return getattr(model, "text_model", model)


def sd2_stored(model):
    """The SD2 text encoder as sd-scripts loads it: the architecture without its last block."""
    m = copy.deepcopy(model)
    _text_model(m).encoder.layers = _text_model(m).encoder.layers[:-1]
    m.config.num_hidden_layers -= 1
    return m


def sd_encode_tokens(tokenizer, text_encoder, tokens, clip_skip=None):
    tokens = tokens[0]
    b_size = tokens.size()[0]
    max_token_length = tokens.size()[1] * tokens.size()[2]
    model_max_length = tokenizer.model_max_length
    tokens = tokens.reshape((-1, model_max_length))

    if clip_skip is None:
        encoder_hidden_states = text_encoder(tokens)[0]
    else:
        enc_out = text_encoder(tokens, output_hidden_states=True, return_dict=True)
        encoder_hidden_states = enc_out["hidden_states"][-clip_skip]
        encoder_hidden_states = _text_model(text_encoder).final_layer_norm(encoder_hidden_states)

    encoder_hidden_states = encoder_hidden_states.reshape((b_size, -1, encoder_hidden_states.shape[-1]))

    if max_token_length != model_max_length:
        v1 = tokenizer.pad_token_id == tokenizer.eos_token_id
        if not v1:
            states_list = [encoder_hidden_states[:, 0].unsqueeze(1)]  # <BOS>
            for i in range(1, max_token_length, model_max_length):
                chunk = encoder_hidden_states[:, i : i + model_max_length - 2]
                if i > 0:
                    for j in range(len(chunk)):
                        if tokens[j, 1] == tokenizer.eos_token:  # an id against a str: never equal
                            chunk[j, 0] = chunk[j, 1]
                states_list.append(chunk)
            states_list.append(encoder_hidden_states[:, -1].unsqueeze(1))
            encoder_hidden_states = torch.cat(states_list, dim=1)
        else:
            states_list = [encoder_hidden_states[:, 0].unsqueeze(1)]  # <BOS>
            for i in range(1, max_token_length, model_max_length):
                states_list.append(encoder_hidden_states[:, i : i + model_max_length - 2])
            states_list.append(encoder_hidden_states[:, -1].unsqueeze(1))  # <EOS>
            encoder_hidden_states = torch.cat(states_list, dim=1)

    return [encoder_hidden_states]


@torch.no_grad()
def sd_encode_tokens_with_weights(tokenizer, text_encoder, tokens_list, weights_list, clip_skip=None):
    encoder_hidden_states = sd_encode_tokens(tokenizer, text_encoder, tokens_list, clip_skip)[0]
    weights = weights_list[0]
    if weights.shape[1] == 1:  # no max_token_length
        encoder_hidden_states = encoder_hidden_states * weights.squeeze(1).unsqueeze(2)
    else:
        for i in range(weights.shape[1]):
            encoder_hidden_states[:, i * 75 + 1 : i * 75 + 76] = encoder_hidden_states[:, i * 75 + 1 : i * 75 + 76] * weights[
                :, i, 1:-1
            ].unsqueeze(-1)
    return [encoder_hidden_states]


# ------------------------------------------------------------------------------------------------ SDXL


def _pool_workaround(text_encoder, last_hidden_state, input_ids, eos_token_id):
    eos_token_mask = (input_ids == eos_token_id).int()
    eos_token_index = torch.argmax(eos_token_mask, dim=1)
    pooled_output = last_hidden_state[torch.arange(last_hidden_state.shape[0]), eos_token_index]
    pooled_output = text_encoder.text_projection(pooled_output.to(text_encoder.text_projection.weight.dtype))
    return pooled_output.to(last_hidden_state.dtype)


def _get_hidden_states_sdxl(input_ids1, input_ids2, tokenizer1, tokenizer2, text_encoder1, text_encoder2):
    b_size = input_ids1.size()[0]
    if input_ids1.size()[1] == 1:
        max_token_length = None
    else:
        max_token_length = input_ids1.size()[1] * input_ids1.size()[2]
    input_ids1 = input_ids1.reshape((-1, tokenizer1.model_max_length))
    input_ids2 = input_ids2.reshape((-1, tokenizer2.model_max_length))

    enc_out = text_encoder1(input_ids1, output_hidden_states=True, return_dict=True)
    hidden_states1 = enc_out["hidden_states"][SDXL_TE1_LAYER]

    enc_out = text_encoder2(input_ids2, output_hidden_states=True, return_dict=True)
    hidden_states2 = enc_out["hidden_states"][-2]  # penuultimate layer

    pool2 = _pool_workaround(text_encoder2, enc_out["last_hidden_state"], input_ids2, tokenizer2.eos_token_id)

    n_size = 1 if max_token_length is None else max_token_length // 75
    hidden_states1 = hidden_states1.reshape((b_size, -1, hidden_states1.shape[-1]))
    hidden_states2 = hidden_states2.reshape((b_size, -1, hidden_states2.shape[-1]))

    if max_token_length is not None:
        states_list = [hidden_states1[:, 0].unsqueeze(1)]  # <BOS>
        for i in range(1, max_token_length, tokenizer1.model_max_length):
            states_list.append(hidden_states1[:, i : i + tokenizer1.model_max_length - 2])
        states_list.append(hidden_states1[:, -1].unsqueeze(1))  # <EOS>
        hidden_states1 = torch.cat(states_list, dim=1)

        states_list = [hidden_states2[:, 0].unsqueeze(1)]  # <BOS>
        for i in range(1, max_token_length, tokenizer2.model_max_length):
            chunk = hidden_states2[:, i : i + tokenizer2.model_max_length - 2]
            states_list.append(chunk)
        states_list.append(hidden_states2[:, -1].unsqueeze(1))
        hidden_states2 = torch.cat(states_list, dim=1)

        pool2 = pool2[::n_size]

    return hidden_states1, hidden_states2, pool2


@torch.no_grad()
def sdxl_encode_tokens_with_weights(tokenizers, models, tokens_list, weights_list):
    hidden_states1, hidden_states2, pool2 = _get_hidden_states_sdxl(
        tokens_list[0], tokens_list[1], tokenizers[0], tokenizers[1], models[0], models[1]
    )
    if weights_list[0].shape[1] == 1:  # no max_token_length
        hidden_states1 = hidden_states1 * weights_list[0].squeeze(1).unsqueeze(2)
        hidden_states2 = hidden_states2 * weights_list[1].squeeze(1).unsqueeze(2)
    else:
        for weight, hidden_states in zip(weights_list, [hidden_states1, hidden_states2]):
            for i in range(weight.shape[1]):
                hidden_states[:, i * 75 + 1 : i * 75 + 76] = hidden_states[:, i * 75 + 1 : i * 75 + 76] * weight[
                    :, i, 1:-1
                ].unsqueeze(-1)
    return [hidden_states1, hidden_states2, pool2]
