"""The layer window: a contiguous run of MoE layers, 0-indexed and inclusive at both ends, written "FIRST:LAST".

A `Window` is the pair (first, last), so it unpacks and writes to JSON as ``[first, last]``; its layers are
``window.layers``. The paper's 1-indexed windows are converted (its Qwen3 window 8-35 is ``Window(7, 34)``).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np


class Window(NamedTuple):
    """MoE layers ``first`` to ``last``, 0-indexed, inclusive."""

    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> Window:
        """``"A:B"`` -> ``Window(A, B)``; ValueError unless both are integers with 0 <= A <= B."""
        try:
            first, last = (int(part) for part in text.split(":"))
        except ValueError:
            raise ValueError(f"window must be FIRST:LAST (MoE-layer indices), got {text!r}") from None
        if not 0 <= first <= last:
            raise ValueError(f"window {text!r} must satisfy 0 <= FIRST <= LAST (MoE-layer indices)")
        return cls(first, last)

    def check(self, num_layers: int, what: str = "the model") -> Window:
        """This window if it lies inside ``num_layers`` MoE layers; ValueError naming ``what`` otherwise."""
        if not 0 <= self.first <= self.last < num_layers:
            raise ValueError(f"window {self} lies outside {what}: need 0 <= FIRST <= LAST < {num_layers} "
                             "(MoE layers, 0-indexed, inclusive)")
        return self

    @property
    def layers(self) -> range:
        """The window's MoE layers, in order."""
        return range(self.first, self.last + 1)

    def mean(self, curve: Sequence[float] | np.ndarray) -> float:
        """Mean of a per-layer curve [moe_layers] over the window, in the curve's own precision (ValueError if
        the window does not fit the curve)."""
        values = np.asarray(curve)
        self.check(values.size, f"a {values.size}-layer curve")
        return float(np.mean(values[self.first:self.last + 1]))

    def __str__(self) -> str:
        return f"{self.first}:{self.last}"


def layer_list(layers: Window | Iterable[int]) -> list[int]:
    """The MoE layers of a window, or the given layers as a list (a window is never read as two layers)."""
    return list(layers.layers if isinstance(layers, Window) else layers)
