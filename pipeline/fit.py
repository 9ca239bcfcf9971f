"""What this device's memory is known to fit: the largest image made and the
smallest refused, so an image that can never fit is answered 422, not 503 forever."""

from __future__ import annotations

import threading

from pipeline.request import RequestInvalid


class ImageTooLarge(RequestInvalid):
    """An image larger than any made here did not fit in device memory even alone and
    after freeing what could be freed: answered 422 naming the largest size known to
    fit, since asking again cannot help on this device."""


class FitRecord:
    """What this device is known to fit: the largest image made so far, and the
    smallest image that did not fit even alone. Thread-safe."""

    def __init__(self) -> None:
        self.largest_made: tuple[int, int] | None = None
        self.refused_pixels: int | None = None
        self._lock = threading.Lock()

    def made(self, width: int, height: int) -> None:
        with self._lock:
            if self.largest_made is None or width * height > self.largest_made[0] * self.largest_made[1]:
                self.largest_made = (width, height)

    def known_to_fit(self, width: int, height: int) -> bool:
        largest = self.largest_made
        return largest is not None and width * height <= largest[0] * largest[1]

    def check(self, width: int, height: int) -> None:
        """Raise ImageTooLarge for a size at least as large as one that did not fit."""
        if self.refused_pixels is not None and width * height >= self.refused_pixels:
            raise self.too_large(width, height)

    def refuse(self, width: int, height: int) -> ImageTooLarge:
        with self._lock:
            self.refused_pixels = min(self.refused_pixels or width * height, width * height)
        return self.too_large(width, height)

    def too_large(self, width: int, height: int) -> ImageTooLarge:
        largest = self.largest_made
        hint = (
            f"the largest made here is {largest[0]}x{largest[1]}: ask for at most "
            f"{largest[0] * largest[1]:,} pixels (width x height)"
            if largest
            else "ask for a smaller size"
        )
        return ImageTooLarge(
            "width" if width >= height else "height",
            f"a {width}x{height} image does not fit in this GPU's memory, even alone; {hint}",
        )
