"""The comfy preset on Lumina 2 does what ComfyUI does: its Gemma-2 tokenizer keeps weights (comfy/text_encoders/
lumina2.py @02f897c: `Gemma2BTokenizer` sets no disable_weights), so `(x:w)` is applied as `encode_token_weights`
(comfy/sd1_clip.py) applies it. The oracle below is an independent transliteration of ComfyUI's path around the
tests' tiny Gemma-2 (tests/tiny_llm.py) run through transformers directly:

- CLIPTextEncodeLumina2 (comfy_extras/nodes_lumina2.py @09494bc): f"{system_prompt} <Prompt Start> {user_prompt}";
- `token_weights` / `parse_parentheses` split it into weighted segments; each is tokenized on its own with its
  BOS cut off (`tokens_start` 1), one BOS first, no end token, no padding (`pad_to_max_length=False`);
- `encode_token_weights`: with any weight ≠ 1, a row `gen_empty_tokens({"start": BOS, "pad": 0}, n)` is encoded
  beside it, its pads masked (`SDClipModel.forward`: the mask stops at the first pad); each token of weight w ≠ 1
  becomes (z − z_empty)·w + z_empty; `hidden_states[-2]` (layer_idx -2, no final norm).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_llm import tiny_folder  # noqa: E402

from sdclip.conditioner import Conditioner  # noqa: E402
from sdclip.conventions.family import get_family  # noqa: E402

SYSTEM = get_family("lumina2").roles[0].llm.template.split(" <Prompt Start> ")[0]


def _parse_parentheses(string: str) -> list[str]:
    out, item, level = [], "", 0
    for c in string:
        if c == "(":
            if level == 0:
                if item:
                    out.append(item)
                item = "("
            else:
                item += c
            level += 1
        elif c == ")":
            level -= 1
            if level == 0:
                out.append(item + ")")
                item = ""
            else:
                item += c
        else:
            item += c
    if item:
        out.append(item)
    return out


def _token_weights(string: str, weight: float) -> list[tuple[str, float]]:
    out = []
    for x in _parse_parentheses(string):
        w = weight
        if len(x) >= 2 and x[0] == "(" and x[-1] == ")":
            x = x[1:-1]
            colon = x.rfind(":")
            w *= 1.1
            if colon > 0:
                try:
                    w = float(x[colon + 1:])
                    x = x[:colon]
                except ValueError:
                    pass
            out += _token_weights(x, w)
        else:
            out.append((x, weight))
    return out


@torch.no_grad()
def comfyui_lumina2(folder: Path, user_prompt: str) -> torch.Tensor:
    """ComfyUI's Lumina 2 conditioning [1, n, D] for `user_prompt` (the transliteration described above)."""
    import transformers as T

    tok = T.AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    model = T.Gemma2Model.from_pretrained(str(folder / "text_encoder")).eval()
    text = f"{SYSTEM} <Prompt Start> {user_prompt}"
    pairs = [(tok.bos_token_id, 1.0)]
    for segment, weight in _token_weights(text, 1.0):
        if segment:
            pairs += [(t, weight) for t in tok(segment)["input_ids"][1:]]
    ids = torch.tensor([[t for t, _ in pairs]])
    z = model(ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states[-2][0]
    if all(w == 1.0 for _, w in pairs):
        return z[None]
    n = ids.shape[1]
    empty = torch.tensor([[tok.bos_token_id] + [0] * (n - 1)])
    mask = torch.zeros_like(empty)
    mask[0, 0] = 1
    z_empty = model(empty, attention_mask=mask, output_hidden_states=True).hidden_states[-2][0]
    out = z.clone()
    for j, (_, w) in enumerate(pairs):
        if w != 1.0:
            out[j] = (z[j] - z_empty[j]) * w + z_empty[j]
    return out[None]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny_folder(tmp_path_factory.mktemp("lumina2-comfy"), "lumina2")


@pytest.mark.parametrize("prompt", [
    "a (red:1.3) fox in the (snow), [blurry]",  # joined with the system prompt, nested, brackets literal
    "(photo:0.6) of a cat sitting on a mat",    # opens with a group: the system prompt is its own segment
    "((red)) fox, (blue (cat:1.5) mat:0.8)",    # nested weights, a group inside a weighted group
    "a plain red fox",                          # no weights: ComfyUI encodes the text alone, no z_empty
])
@torch.no_grad()
def test_comfy_preset_equals_comfyui_on_lumina2(folder: Path, prompt: str) -> None:
    cond = Conditioner.from_pretrained(folder, preset="comfy")
    out = cond(prompt).diffusers_kwargs()
    theirs = comfyui_lumina2(folder, prompt)
    n = theirs.shape[1]
    assert int(out["prompt_attention_mask"][0].sum()) == n  # the same tokens, each weighted segment on its own
    torch.testing.assert_close(out["prompt_embeds"][:, :n], theirs, atol=1e-5, rtol=0)
    assert not cond.prepare(prompt).parts[0].rows[0].notes  # applied: nothing to warn about


@torch.no_grad()
def test_weights_change_the_states_and_other_presets_still_say_they_do_nothing(folder: Path) -> None:
    comfy = Conditioner.from_pretrained(folder, preset="comfy")
    weighted, plain = comfy("a (red:1.3) fox"), comfy("a red fox")
    assert not torch.equal(weighted.positive.embeds, plain.positive.embeds)
    a1111 = Conditioner.from_pretrained(folder, preset="a1111")
    assert any("do nothing" in n for n in a1111.prepare("a (red:1.3) fox").parts[0].rows[0].notes)
