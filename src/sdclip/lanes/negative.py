"""A negative prompt's text, marked as such for the lanes that lay negatives out differently (Lumina 2: its
pipeline puts only the prompt, never the negative, after its system prompt). Equal to and hashed unlike the
same text as a prompt, so a request's texts stay distinct; any other lane reads it as the plain str it is."""

from __future__ import annotations


class NegativeText(str):
    """A str that is a negative prompt."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NegativeText) and str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(("negative", str(self)))


def is_negative(text: object) -> bool:
    return isinstance(text, NegativeText)


def negative_keys(keys: list, marked: bool) -> list:
    """The negative prompts' keys, marked where `marked` (a family with a lane that reads the mark)."""
    if not marked:
        return keys
    return [NegativeText(k) if isinstance(k, str) else tuple(NegativeText(t) if isinstance(t, str) else t for t in k)
            for k in keys]
