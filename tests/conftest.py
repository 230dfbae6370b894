"""Suite-wide settings.

The test models are tiny: with more than one intra-op thread, torch spends far longer synchronising
threads than computing (measured here: a tiny linear layer 0.3 ms on one thread, 28–45 ms on two under
load), so the suite runs single-threaded. Real-size tests that want both cores raise it locally.
"""

import torch

torch.set_num_threads(1)
