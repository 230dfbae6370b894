"""A Conditioner shared by threads (as `sdclip serve` shares one): no errors under contention, results equal
to single-threaded ones (to fp32 rounding of the batch shape: a row served from the cache was encoded in
another batch). A tiny cache makes every call evict and re-insert, the case that used to raise KeyError."""

from __future__ import annotations

import threading

import torch
from tiny_conditioners import make

from sdclip.encoder.batching import RowCache

PROMPTS = [f"a (red:1.{k % 5}) fox number {k}, BREAK a forest at dusk {k % 3}" for k in range(24)]
NEGATIVES = ["blurry", "lowres, (worst quality:1.3)", ""]


def test_eight_threads_share_one_conditioner_and_a_tiny_cache() -> None:
    single = make("sdxl")
    want = {p: single(p, negative=NEGATIVES[k % 3]) for k, p in enumerate(PROMPTS)}
    shared = make("sdxl")
    shared.cache = RowCache(max_rows=3)  # far smaller than one request: constant eviction
    for enc in shared._rows:
        enc.cache = shared.cache
    errors: list[BaseException] = []
    got: dict[tuple[int, str], object] = {}
    start = threading.Barrier(8)

    def work(t: int) -> None:
        try:
            start.wait()
            for k in range(len(PROMPTS)):
                p = PROMPTS[(k + 3 * t) % len(PROMPTS)]
                got[(t, p)] = shared(p, negative=NEGATIVES[PROMPTS.index(p) % 3])
        except BaseException as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(got) == 8 * len(PROMPTS)
    for (_, p), pair in got.items():
        torch.testing.assert_close(pair.positive.embeds, want[p].positive.embeds, rtol=0, atol=1e-5)
        torch.testing.assert_close(pair.negative.embeds, want[p].negative.embeds, rtol=0, atol=1e-5)
        torch.testing.assert_close(pair.positive.pooled, want[p].positive.pooled, rtol=0, atol=1e-5)
