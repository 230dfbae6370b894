"""Model families as data: the text towers that exist, and what a pipeline of each family takes from them.

The one table of families and roles: loading (which towers a file must hold, their shapes), textual
inversion (which vectors go to which encoder), presets (default layers), the encoder plan (pad ids) and the
tests' model builders all read it.

| family   | encoders (role: tower)                   | hidden used (default)    | embeds         | pooled                   |
|----------|------------------------------------------|--------------------------|----------------|--------------------------|
| sd1      | clip_l: CLIP ViT-L (pad EOS)             | last + final LN          | [B, 77k, 768]  | —                        |
| sd2      | clip_h: OpenCLIP ViT-H (pad 0)           | penultimate + final LN   | [B, 77k, 1024] | —                        |
| sdxl     | clip_l: ViT-L (pad EOS) + clip_g: bigG (pad 0) | penultimate, no LN | [B, 77k, 2048] | [B, 1280] bigG projected |
| longclip | clip_l: LongCLIP-L (pad EOS, 248 positions) | last + final LN       | [B, 248k, 768] | —                        |
| sd3      | clip_l (proj) + clip_g + t5 (T5 v1.1 XXL)  | penultimate, no LN; T5 last | [B, 77k + N, 4096] | [B, 2048] L ‖ G projected |
| flux     | clip_l (pooled only) + t5                  | T5 last                  | [B, N, 4096]   | [B, 768] L unprojected   |
| chroma   | t5 (T5 v1.1 XXL), masked, 512              | T5 last                  | [B, 512, 4096] + mask (tokens + 1 pad) | — |
| wan      | t5 (umT5-XXL), masked, 512 (encode_prompt: 226), zero after the prompt | T5 last | [B, N, 4096] | —    |
| pixart-sigma | t5 (T5 v1.1 XXL), masked, 300, lower-cased | T5 last               | [B, 300, 4096] + mask   | —               |
| auraflow | t5 (umT5 / Pile-T5-XL), masked, 256, zero after the prompt | T5 last  | [B, 256, 2048] + mask   | —               |
| flux2    | mistral3 (Mistral Small 3.1 24B), chat + system message, 512 | layers 10, 20, 30 side by side | [B, 512, 15360] | — |
| flux2-klein | qwen3 (Qwen3-4B / 8B), chat, 512                       | layers 9, 18, 27 side by side | [B, 512, 7680] (8B: 12288) | — |

SD3 joins L ‖ G on features, zero-pads them to T5's width and puts the T5 block after them on the token
axis (diffusers' StableDiffusion3Pipeline.encode_prompt); Flux's sequence is T5 alone and CLIP-L gives
only the pooled vector (FluxPipeline.encode_prompt). A role's `prompt` says which of diffusers' prompt,
prompt_2, prompt_3 feeds it. `blocks` groups the sequence roles joined on features; blocks are joined on
tokens (sdclip.assemble.combine.RECIPES). T5 sequences have their own length (`EncoderRole.length`,
diffusers' max_sequence_length: SD3 256, Flux 512; `min_length`: ComfyUI's minimum, 77 / 256).

Pad positions are attended by the UNet, so the pad id matters: CLIP ViT-L pads with EOS (49407), OpenCLIP
models with 0 (the id of "!"). `skip` counts final transformer blocks that do not run, from the tower's
full depth (ViT-H: 24, though diffusers' SD2 folder stores 23: `Tower.diffusers_layers`).

The T5-only families (diffusers 0.42.1) pass the tokenizer's attention mask to T5 (`EncoderRole.masking`):
- chroma: `ChromaPipeline._get_t5_prompt_embeds` (pipelines/chroma/pipeline_chroma.py:225-251): 512, mask to
  T5, states kept at every position, the returned mask covers the tokens and one pad (`<= seq_lengths`).
- wan: `WanPipeline._get_t5_prompt_embeds` (pipelines/wan/pipeline_wan.py:170-191): `prompt_clean` (ftfy
  where installed, HTML unescaped twice, whitespace collapsed), mask to umT5, each prompt's states cut to its
  length then zero-padded; 226 in encode_prompt (:208), 512 in `__call__` (:404, the default here); no mask out.
- pixart-sigma: `PixArtSigmaPipeline.encode_prompt` (pipelines/pixart_alpha/pipeline_pixart_sigma.py:300-324,
  :488 `text.lower().strip()` with clean_caption=False), 300, mask to T5 and returned.
- auraflow: `AuraFlowPipeline.encode_prompt` (pipelines/aura_flow/pipeline_aura_flow.py:302-311), 256, mask to
  umT5, states multiplied by the mask (zero after the prompt), the mask returned.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdclip.conventions.clip_skip import LayerSelect
from sdclip.conventions.special_tokens import CLIP_EOS


@dataclass(frozen=True)
class Tower:
    """A text transformer's architecture (facts of the released models, head width 64 throughout).

    - CLIP ViT-L/14 (SD1.x, SDXL's first encoder): 768 wide, 12 layers, 12 heads, MLP 3072, quick_gelu.
    - OpenCLIP ViT-H/14 (SD2.x): 1024, 24 layers, 16 heads, MLP 4096, gelu; diffusers' SD2 `text_encoder`
      stores only 23 blocks (SD2 reads the penultimate layer, so the last block is never needed).
    - OpenCLIP ViT-bigG/14 (SDXL's second encoder): 1280, 32 layers, 20 heads, MLP 5120, gelu, and a
      1280×1280 text projection applied to the pooled vector.
    - LongCLIP-L: ViT-L with 248 positions (4·77 − 3·20).
    - T5 v1.1 XXL encoder (SD3's text_encoder_3, Flux's text_encoder_2): 4096 wide, 24 layers, 64 heads,
      FFN 10240 gated-GELU, relative positions (no position limit): kind "t5".
    """

    name: str
    width: int
    depth: int
    heads: int
    mlp: int
    act: str
    positions: int = 77
    projection: int | None = None  #: the pooled projection's size where the family uses it
    diffusers_layers: int | None = None  #: blocks a diffusers folder stores, when fewer than `depth`
    kind: str = "clip"  #: "clip" (sdclip.encoder.model) or "t5" (sdclip.encoder.t5)


VIT_L = Tower("clip-vit-l-14", 768, 12, 12, 3072, "quick_gelu")
VIT_H = Tower("openclip-vit-h-14", 1024, 24, 16, 4096, "gelu", diffusers_layers=23)
VIT_BIGG = Tower("openclip-vit-bigg-14", 1280, 32, 20, 5120, "gelu", projection=1280)
LONGCLIP_L = Tower("longclip-l", 768, 12, 12, 3072, "quick_gelu", positions=248)
T5_XXL = Tower("t5-v1_1-xxl", 4096, 24, 64, 10240, "gelu_new", positions=0, kind="t5")
#: umT5-XXL (Wan 2.1 / 2.2's text encoder, UMT5EncoderModel): T5 v1.1 XXL's shape, a table per layer, 256k vocabulary
UMT5_XXL = Tower("umt5-xxl", 4096, 24, 64, 10240, "gelu_new", positions=0, kind="t5")
#: AuraFlow's text encoder: UMT5EncoderModel of Pile-T5-XL's shape (2048 wide, 32 heads, FFN 5120)
PILE_T5_XL = Tower("umt5-pile-t5-xl", 2048, 24, 32, 5120, "gelu_new", positions=0, kind="t5")
TOWERS: dict[str, Tower] = {t.name: t for t in (VIT_L, VIT_H, VIT_BIGG, LONGCLIP_L)}  #: the CLIP towers
#: LLM text encoders (kind "llm", sdclip.lanes.llm_lane): transformers' own classes run them
QWEN25VL_7B = Tower("qwen2.5-vl-7b-text", 3584, 28, 28, 18944, "silu", positions=128000, kind="llm")
QWEN3_4B = Tower("qwen3-4b", 2560, 36, 32, 9728, "silu", positions=40960, kind="llm")
GEMMA2_2B = Tower("gemma-2-2b", 2304, 26, 8, 9216, "gelu_pytorch_tanh", positions=8192, kind="llm")
#: Flux.2 [dev]'s text encoder: Mistral-Small-3.1-24B-Instruct-2503's text model (Mistral3ForConditionalGeneration)
MISTRAL_SMALL_31 = Tower("mistral-small-3.1-24b-text", 5120, 40, 32, 32768, "silu", positions=131072, kind="llm")
#: Flux.2's system message (diffusers 0.42.1 pipelines/flux2/system_messages.py SYSTEM_MESSAGE, from BFL's flux2
#: repository src/flux2/system_messages.py)
FLUX2_SYSTEM = ("You are an AI that reasons about image descriptions. You give structured responses focusing on object "
                "relationships, object\nattribution and actions without speculation.")


@dataclass(frozen=True)
class ChatCall:
    """How a pipeline renders its prompt through the tokenizer's chat template (`LLMPrompt.template == "chat"`).
    Default: Z-Image's call (pipelines/z_image/pipeline_z_image.py:221-226)."""

    system: str | None = None  #: a system message before the user's (Flux.2)
    generation: bool = True  #: add_generation_prompt
    thinking: bool | None = True  #: enable_thinking (Qwen3 templates); None: not passed
    parts: bool = False  #: content as [{"type": "text", "text": ...}] (Flux.2's format_input), not a string
    special_tokens: bool = True  #: the rendered text tokenized with add_special_tokens (apply_chat_template's
    #: own tokenize=True adds none: Flux.2)
    remove: tuple[str, ...] = ()  #: substrings taken out of the prompt first (Flux.2: "[IMG]")


@dataclass(frozen=True)
class LLMPrompt:
    """How an LLM family's pipeline puts a prompt to its decoder (read by sdclip.lanes.llm_lane and its
    runner). Facts of diffusers 0.42.1, cited in sdclip.lanes.llm_lane."""

    template: str  #: a format string with one `{}`, or "chat": the tokenizer's own chat template
    drop: int = 0  #: leading template tokens cut from the states (Qwen-Image's prompt_template_encode_start_idx)
    counts_kept: bool = False  #: max_sequence_length counts the kept tokens (Qwen-Image) rather than all
    negative_template: bool = True  #: the negative goes through the template too (Lumina 2: it does not)
    fixed: bool = False  #: padded to max_sequence_length and every position kept (Lumina 2, Flux.2)
    right_padded: bool = False  #: the pipeline sets padding_side="right" itself (Lumina 2); else the tokenizer's own
    mask_kwarg: str | None = None  #: the pipeline's mask argument (`prompt_embeds_mask`, `prompt_attention_mask`)
    as_list: bool = False  #: the pipeline takes a list of [n_i, D] tensors (Z-Image)
    comfy_literal: bool = False  #: ComfyUI's tokenizer sets disable_weights: `(x:1.2)` is text
    model_class: str = ""  #: transformers class of the decoder that runs the text (sdclip.encoder.llm_runner)
    chat: ChatCall = ChatCall()  #: the chat template's call where `template` is "chat"
    #: hidden_states indices read and joined on features, in order (Flux.2: (10, 20, 30)); the decoder stops at
    #: the deepest. Empty: the role's `skip` / `final_norm` say which one layer
    layers: tuple[int, ...] = ()


@dataclass(frozen=True)
class T5Masking:
    """How a T5-only pipeline masks its T5 (read by the T5 lane and its runner, sdclip.encoder.t5_masked).

    The tokenizer's attention mask (the prompt's tokens and `</s>`) always goes to T5 with these families."""

    zero_after: bool = False  #: states after the prompt's length are zeros (Wan, AuraFlow): only real tokens run
    returned: int | None = None  #: the pipeline takes a mask: it covers the tokens and this many pads (Chroma 1)
    mask_dtype: str = "long"  #: the returned mask's dtype: "long" (the tokenizer's) or "embeds" (Chroma's)
    clean: str = ""  #: the pipeline's text clean-up before tokenizing: "wan" (prompt_clean), "lower" (PixArt)


@dataclass(frozen=True)
class EncoderRole:
    """One text encoder of a family: its tower, pad id and default layer."""

    name: str  #: "clip_l", "clip_h", "clip_g": also the key of textual-inversion vectors
    tower: Tower
    pad_id: int
    skip: int  #: blocks not run by default (1 = penultimate)
    final_norm: bool
    projected: bool = False  #: the pooled vector goes through a text projection (identity where a file has none)
    sequence: bool = True  #: its hidden states are part of the conditioning sequence (Flux CLIP-L: pooled only)
    prompt: int = 1  #: which of diffusers' prompt (1), prompt_2 (2), prompt_3 (3) it encodes
    length: int | None = None  #: T5: sequence length by default (diffusers' max_sequence_length)
    min_length: int | None = None  #: T5: ComfyUI's minimum length (padded up to it, never truncated)
    masking: T5Masking | None = None  #: T5: the attention mask goes to T5 (the T5-only families)
    llm: LLMPrompt | None = None  #: LLM: its template and output (the LLM families)

    @property
    def width(self) -> int:
        """Its conditioning's width: an LLM reading several layers gives them side by side (Flux.2: 3 × 5120)."""
        return self.tower.width * max(1, len(self.llm.layers) if self.llm else 1)

    @property
    def kind(self) -> str:
        return self.tower.kind

    @property
    def default_layer(self) -> LayerSelect:
        """The hidden state the family reads without a clip-skip setting."""
        return LayerSelect(self.skip, self.final_norm)


@dataclass(frozen=True)
class Family:
    name: str
    roles: tuple[EncoderRole, ...]
    length: int = 77
    pooled_role: int | None = None  #: index of the encoder whose projected EOS state is the pooled vector
    recipe: str = "features"  #: how the encoders' sequences are joined (sdclip.assemble.combine.RECIPES)
    pooled_from: tuple[int, ...] = ()  #: several pooled encoders, concatenated (SD3: L ‖ G); default (pooled_role,)
    blocks: tuple[tuple[int, ...], ...] = ()  #: sequence roles joined on features, per token block; default all
    zeros_negative: bool = False  #: diffusers' force_zeros_for_empty_prompt exists in this family's pipeline
    #: the pipeline takes a negative conditioning (Flux.2 [dev], guidance-distilled, takes only prompt_embeds:
    #: pipeline_flux2.py __call__); where not, none is encoded and a given one is ignored with a warning
    reads_negative: bool = True

    @property
    def pooled_roles(self) -> tuple[int, ...]:
        return self.pooled_from or (() if self.pooled_role is None else (self.pooled_role,))

    @property
    def sequence_blocks(self) -> tuple[tuple[int, ...], ...]:
        return self.blocks or (tuple(i for i, r in enumerate(self.roles) if r.sequence),)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The encoder kinds of its roles, each once, in role order (sdclip.lanes has one lane per kind)."""
        return tuple(dict.fromkeys(r.kind for r in self.roles))

    @property
    def width(self) -> int:
        """Feature width of the conditioning: each block's encoders side by side, the widest block."""
        return max(sum(self.roles[i].width for i in block) for block in self.sequence_blocks)


FAMILIES: dict[str, Family] = {
    "sd1": Family("sd1", (EncoderRole("clip_l", VIT_L, CLIP_EOS, 0, True),)),
    "sd2": Family("sd2", (EncoderRole("clip_h", VIT_H, 0, 1, True),)),
    "sdxl": Family(
        "sdxl",
        (EncoderRole("clip_l", VIT_L, CLIP_EOS, 1, False), EncoderRole("clip_g", VIT_BIGG, 0, 1, False, prompt=2)),
        pooled_role=1, zeros_negative=True,
    ),
    "longclip": Family("longclip", (EncoderRole("clip_l", LONGCLIP_L, CLIP_EOS, 0, True),), length=248),
    "sd3": Family(
        "sd3",
        (
            EncoderRole("clip_l", VIT_L, CLIP_EOS, 1, False, projected=True, prompt=1),
            EncoderRole("clip_g", VIT_BIGG, 0, 1, False, projected=True, prompt=2),
            EncoderRole("t5", T5_XXL, 0, 0, True, prompt=3, length=256, min_length=77),
        ),
        pooled_role=1, pooled_from=(0, 1), recipe="sd3", blocks=((0, 1), (2,)),
    ),
    "flux": Family(
        "flux",
        (
            EncoderRole("clip_l", VIT_L, CLIP_EOS, 0, True, sequence=False, prompt=1),
            EncoderRole("t5", T5_XXL, 0, 0, True, prompt=2, length=512, min_length=256),
        ),
        pooled_role=0, recipe="flux",
    ),
    "chroma": Family(
        "chroma", (EncoderRole("t5", T5_XXL, 0, 0, True, length=512,
                               masking=T5Masking(returned=1, mask_dtype="embeds")),),
    ),
    "wan": Family(
        "wan", (EncoderRole("t5", UMT5_XXL, 0, 0, True, length=512, masking=T5Masking(zero_after=True, clean="wan")),),
    ),
    "pixart-sigma": Family(
        "pixart-sigma", (EncoderRole("t5", T5_XXL, 0, 0, True, length=300, masking=T5Masking(returned=0, clean="lower")),),
    ),
    "auraflow": Family(
        "auraflow", (EncoderRole("t5", PILE_T5_XL, 0, 0, True, length=256, masking=T5Masking(zero_after=True, returned=0)),),
    ),
    # LLM text encoders (sdclip.lanes.llm_lane): template, dropped tokens, layer read, max_sequence_length
    "qwen-image": Family(
        "qwen-image", (EncoderRole("qwen25vl", QWEN25VL_7B, 151643, 0, True, length=1024, llm=LLMPrompt(
            "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
            "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
            "<|im_start|>assistant\n", drop=34, counts_kept=True, mask_kwarg="prompt_embeds_mask",
            comfy_literal=True, model_class="Qwen2_5_VLTextModel")),),
    ),
    "z-image": Family(
        "z-image", (EncoderRole("qwen3", QWEN3_4B, 151643, 1, False, length=512, llm=LLMPrompt(
            "chat", as_list=True, comfy_literal=True, model_class="Qwen3Model")),),
    ),
    "lumina2": Family(
        "lumina2", (EncoderRole("gemma2", GEMMA2_2B, 0, 1, False, length=256, llm=LLMPrompt(
            "You are an assistant designed to generate superior images with the superior degree of image-text "
            "alignment based on textual prompts or user prompts. <Prompt Start> {}", negative_template=False,
            fixed=True, right_padded=True, mask_kwarg="prompt_attention_mask", model_class="Gemma2Model")),),
    ),
    # Flux.2 (diffusers 0.42.1 pipelines/flux2/pipeline_flux2.py:304-353, :571-604): the chat template with the
    # system message, padded to 512, hidden_states 10, 20, 30 side by side; no mask, no negative. ComfyUI's
    # Flux2Tokenizer and KleinTokenizer (comfy/text_encoders/flux.py) tokenize with disable_weights=True
    "flux2": Family(
        "flux2", (EncoderRole("mistral3", MISTRAL_SMALL_31, 11, 10, False, length=512, llm=LLMPrompt(
            "chat", fixed=True, layers=(10, 20, 30), comfy_literal=True, model_class="MistralModel", chat=ChatCall(
                system=FLUX2_SYSTEM, generation=False, thinking=None, parts=True, special_tokens=False,
                remove=("[IMG]",)))),),
        reads_negative=False,
    ),
    # Flux.2 [klein] (pipelines/flux2/pipeline_flux2_klein.py:208-262, :429-462): Qwen3 (4B; 9B: Qwen3-8B), the
    # chat template without thinking, padded to 512, hidden_states 9, 18, 27 side by side
    "flux2-klein": Family(
        "flux2-klein", (EncoderRole("qwen3", QWEN3_4B, 151643, 9, False, length=512, llm=LLMPrompt(
            "chat", fixed=True, layers=(9, 18, 27), comfy_literal=True, model_class="Qwen3Model",
            chat=ChatCall(thinking=False))),),
    ),
}
#: the families whose only encoder is a (um)T5 with the attention mask passed to it
T5_ONLY: tuple[str, ...] = tuple(n for n, f in FAMILIES.items() if all(r.masking is not None for r in f.roles))
#: textual-inversion keys → the width of their vectors (clip_l 768, clip_h 1024, clip_g 1280); T5 takes none
EMBEDDING_KEYS: dict[str, int] = {r.name: r.width for f in FAMILIES.values() for r in f.roles if r.kind == "clip"}
#: the most T5 positions diffusers' SD3 / Flux pipelines accept (`max_sequence_length`)
DIFFUSERS_T5_MAX = 512


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; choose one of {', '.join(FAMILIES)}") from None


def one_tower_family(*, width: int | None = None, act: str | None = None, positions: int | None = None) -> str | None:
    """The one single-encoder family whose tower has these traits (None if none or several do): how a
    bare tower or a one-encoder folder is recognised from its shapes or config alone."""
    found = [
        f.name
        for f in FAMILIES.values()
        if len(f.roles) == 1 and f.roles[0].kind == "clip"
        and (width is None or f.roles[0].tower.width == width)
        and (act is None or f.roles[0].tower.act == act)
        and (positions is None or f.roles[0].tower.positions == positions)
    ]
    return found[0] if len(found) == 1 else None
