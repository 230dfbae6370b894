"""`window`: sliding windows of 75 tokens every ``stride`` tokens (no reference tool ships one; ours).

CLIP's attention is causal, so a token's state depends only on what precedes it inside its window: each
token is kept from the *earliest* window that holds it (where it sees the most left context), and every
token after the first window still sees at least ``75 - stride`` tokens of context — where chunking gives
the first token of each chunk none. The merged sequence is [BOS] + one slot per token + [EOS] + the last
window's padding (``Rows.keep``).
"""

from __future__ import annotations

from sdclip.layout.builder import RowBuilder, run_lengths, segments
from sdclip.layout.rows import Rows
from sdclip.layout.spec import LayoutSpec
from sdclip.tokenizer.stream import TokenStream


def window(stream: TokenStream, spec: LayoutSpec) -> Rows:
    b = RowBuilder(stream, spec)
    cap, stride = spec.capacity, spec.stride
    runs = run_lengths(stream)
    segs = segments(stream)
    for lo, hi in segs:
        start = lo
        covered = lo  # tokens before this index are already kept from an earlier window
        while True:
            end = min(hi, start + cap)
            # never split an embedding run: stop before a run that would not fit
            for r0, rn in runs.items():
                if r0 < end < r0 + rn:
                    end = r0
            members = list(range(start, end))
            last = end >= hi
            keep = [start == lo] + [i >= covered for i in members] + [last] * (cap - len(members) + 1)
            b.emit(members, keep)
            covered = end
            if last:
                break
            nxt = start + stride
            for r0, rn in runs.items():  # do not start a window inside a run
                if r0 < nxt < r0 + rn:
                    nxt = r0
            start = nxt if nxt > start else end
    windows = len(b)
    notes = ()
    if windows > len(segs):
        notes = (f"{windows} windows of {cap} tokens, stride {stride}, earliest window kept per token",)
    return b.finish(len(stream), notes=notes)
