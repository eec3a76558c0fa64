"""argparse types shared by the command-line modules: numbers with a lower bound."""

from __future__ import annotations

import argparse
from typing import Callable


def at_least(minimum: float, cast: Callable[[str], float] = int) -> Callable[[str], float]:
    """An argparse ``type``: ``cast(text)`` (``int``: a whole number; ``float``: fractions too), ≥ ``minimum``."""
    kind = "a whole number" if cast is int else "a number"

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {minimum:g} or more, got {text}")
        return value

    parse.__name__ = f"{cast.__name__} ≥ {minimum:g}"  # what argparse names in its own errors
    return parse
