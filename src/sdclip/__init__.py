"""sdclip: Stable Diffusion's CLIP text conditioning — exact, long, weighted, fast.

Stages (each usable alone): syntax → tokenizer → layout → encoder → weighting/assembly.
The first three need no torch, so importing `sdclip` stays light; the torch stages live in
`sdclip.encoder` and `sdclip.conditioner` and are imported on demand.
"""

__version__ = "0.1.0"
