"""What this device's memory is known to fit: the largest load made and the smallest
refused, so an image that can never fit is answered 422, not 503 forever.

A load is counted as the memory plan counts it (pipeline/meta_memory.py): the
transformer's activations grow with pixels x images x 2 when guidance is on (the
prompt and the negative prompt make a batch of two), so a guided 2048x2048 image
weighs twice an unguided one, and a batch of two 1024x1024 images as much as one
1024x2048 (tests/test_engine.py checks this against the meta-device estimate).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from pipeline.errors import ImageTooLarge


@dataclass(frozen=True)
class Load:
    """One model call's size in the memory plan's terms."""

    width: int
    height: int
    images: int = 1
    guided: bool = False

    @property
    def units(self) -> int:
        """Transformer rows the call runs: pixels x images, doubled by guidance."""
        return self.width * self.height * self.images * (2 if self.guided else 1)

    def describe(self) -> str:
        batch = f"{self.images} images of " if self.images > 1 else ""
        return f"{batch}{self.width}x{self.height}{' with guidance' if self.guided else ''}"


class FitRecord:
    """What this device is known to fit: the largest load made so far, and the smallest
    load of one image that did not fit even alone. Thread-safe."""

    def __init__(self) -> None:
        self.largest_made: Load | None = None
        self.refused_units: int | None = None
        self._lock = threading.Lock()

    def made(self, load: Load) -> None:
        with self._lock:
            if self.largest_made is None or load.units > self.largest_made.units:
                self.largest_made = load

    def known_to_fit(self, load: Load) -> bool:
        largest = self.largest_made
        return largest is not None and load.units <= largest.units

    def check(self, load: Load) -> None:
        """Raise ImageTooLarge when one image of `load`'s kind weighs at least as much as
        one that did not fit alone (a batch is split down to single images before that)."""
        one = Load(load.width, load.height, 1, load.guided)
        if self.refused_units is not None and one.units >= self.refused_units:
            raise self.too_large(one)

    def refuse(self, load: Load) -> ImageTooLarge:
        with self._lock:
            self.refused_units = min(self.refused_units or load.units, load.units)
        return self.too_large(load)

    def too_large(self, load: Load) -> ImageTooLarge:
        largest = self.largest_made
        hint = "ask for a smaller size"
        if largest is not None:
            most = largest.units // (2 if load.guided else 1)
            hint = (
                f"the largest made here is {largest.describe()}: ask for at most {most:,} pixels "
                f"(width x height){' with guidance' if load.guided else ''}"
            )
        return ImageTooLarge(
            "width" if load.width >= load.height else "height",
            f"a {load.describe()} image does not fit in this GPU's memory, even alone; {hint}",
        )
