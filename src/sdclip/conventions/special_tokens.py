"""The special token ids the families' tables name (pad ids, the empty prompt's rows). Data only: the
tokenizer stage re-exports CLIP's as `sdclip.tokenizer.stream.BOS` / `EOS`."""

CLIP_BOS = 49406  #: <|startoftext|>
CLIP_EOS = 49407  #: <|endoftext|>: ViT-L's pad id too
T5_EOS = 1  #: T5's `</s>` (it has no BOS; `<pad>` is 0)
