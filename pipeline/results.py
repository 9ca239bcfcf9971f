"""What the generation service hands back: one result per image, and where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

from cache import Entry
from pipeline.lora import LoraSet
from pipeline.request import CanonicalRequest
from similarity import Match

# The tier names of images that were generated: stored (`miss`) or not (`bypass`);
# a hit is named by the cache tier that answered (memory, disk, redis).
MISS_TIER, BYPASS_TIER = "miss", "bypass"
GENERATED = (MISS_TIER, BYPASS_TIER)

Outcome = tuple[str, Entry, dict[str, float]]  # tier, entry, timings (seconds by stage)


@dataclass(frozen=True)
class GenerationResult:
    """What a caller gets back for one image: the stored bytes and where they came from."""

    key: str
    cache: str  # memory | disk | redis | miss | bypass | similar
    entry: Entry
    request: CanonicalRequest
    # Seconds from the call until this image was there: its lookup for a hit, until
    # it was generated and stored for a miss (in a batch, each image its own).
    duration: float
    timings: dict[str, float] = field(default_factory=dict)
    # On a miss: stored images of the same namespace whose prompts are like this one
    # (near-repeats), nearest first. For `cache == "similar"`: the stored prompt served.
    similar: tuple[Match, ...] = ()
    near: Match | None = None
    loras: LoraSet = ()  # the LoRAs it was made with (pipeline/lora.py)

    @property
    def seed(self) -> int:
        return self.request.seed

    @property
    def generated(self) -> bool:
        """Whether the model made it for this call (a miss or a bypass), not a cache tier."""
        return self.cache in GENERATED
