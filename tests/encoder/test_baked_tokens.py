"""A pipeline folder whose tokenizer and text encoder carry an added token (a textual inversion baked in
with diffusers' load_textual_inversion + save_pretrained): the model's own tokenizer is used and the
added token reads its own row of the token table — not a textual-inversion slot."""

from __future__ import annotations

import torch
from clip_files import write_tokenizer
from tiny_models import tiny_family, write_layout
from transformers import CLIPTokenizer

from sdclip.conditioner import Conditioner
from sdclip.encoder.textual_inversion import Embedding

PROMPT = "a <cat-toy> sitting on a wooden table"


def test_added_token_reads_its_own_row(tmp_path):
    fam = tiny_family("sd1", seed=5)
    model = fam.models[0]
    tok = CLIPTokenizer.from_pretrained(write_tokenizer(tmp_path / "base"))
    tok.add_tokens(["<cat-toy>"])
    new_id = tok.convert_tokens_to_ids("<cat-toy>")
    assert new_id == 49408
    model.resize_token_embeddings(len(tok))
    with torch.no_grad():
        model.get_input_embeddings().weight[new_id] = torch.randn(model.config.hidden_size) * 0.5
    folder = write_layout("diffusers", fam, tmp_path / "pipe")
    tok.save_pretrained(folder / "tokenizer")

    ids = tok(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert new_id in ids[0].tolist()
    with torch.no_grad():
        want = model(ids).last_hidden_state

    cond = Conditioner.from_pretrained(folder, preset="diffusers")
    got = cond(PROMPT).positive.embeds
    assert (got - want).abs().max() <= 1e-5
    # without the folder's tokenizer the token would be split into ordinary pieces: a different encoding
    plain = Conditioner(cond.encoders, "sd1", cond.options)(PROMPT).positive.embeds
    assert (plain - want).abs().max() > 1e-3

    # a textual-inversion file on top: its vectors go past the enlarged table, the baked row stays put
    vec = torch.randn(2, model.config.hidden_size) * 0.5
    cond.embeddings.add(Embedding("shiny", {"any": vec}))
    text = PROMPT + ", shiny"
    ids = tok(text, padding="max_length", max_length=77).input_ids
    shiny = tok("shiny", add_special_tokens=False).input_ids
    at = next(i for i in range(len(ids)) if ids[i : i + len(shiny)] == shiny)
    ids = (ids[:at] + [len(tok), len(tok) + 1] + ids[at + len(shiny) :])[:77]  # two vector slots for the word
    model.resize_token_embeddings(len(tok) + 2)  # the oracle: a table with the vectors appended
    with torch.no_grad():
        model.get_input_embeddings().weight[len(tok) :] = vec
        want = model(torch.tensor([ids])).last_hidden_state
    got = cond(text).positive.embeds
    assert (got - want).abs().max() <= 1e-5
