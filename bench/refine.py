"""Steps saved by near-repeats' `refine` mode (issue 27, point 3; pipeline/refine.py).

On the tiny model, in process: the first `--pairs` prompts of the paraphrase set
(bench/data/paraphrases.tsv) are generated and stored, then each one's English
rewording is asked for twice: with `similar_threshold=--threshold` and
`similar_mode=refine` (img2img from the nearest stored image, where one is above
the threshold), and plainly (`no_cache`, so nothing stored interferes). Counts the
transformer's calls (its denoising steps: one per step without guidance) and the
wall time of each, and prints the share refined, the steps per image, the steps
saved and the wall-time ratio. Writes bench/results/refine-latest.json.
Run: python -m bench.refine [--pairs 24] [--size 256] [--steps 8] [--threshold 0.8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.similarity import RESULTS, paraphrases
from cache import LayeredCache, MemoryTier
from pipeline.engine import Engine
from pipeline.request import GenerationRequest
from pipeline.service import GenerationService
from pipeline.suggestions import Suggestions
from similarity import load_embedder
from similarity.near_repeats import NearRepeats


def measure(pairs: int, size: int, steps: int, threshold: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as models:
        engine = Engine("tiny", Path(models))
        engine.start()
        engine.wait_settled(300)
        try:
            assert engine.state == "ready", engine.error
            return asyncio.run(_measure(engine, pairs, size, steps, threshold))
        finally:
            engine.close()


async def _measure(engine: Engine, pairs: int, size: int, steps: int, threshold: float) -> dict[str, Any]:
    cache = LayeredCache([MemoryTier(256 << 20)])
    service = GenerationService(engine, cache, suggestions=Suggestions(NearRepeats(load_embedder(), None)))
    calls: list[int] = []
    engine._pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))

    def ask(prompt: str) -> GenerationRequest:
        return GenerationRequest(prompt=prompt, width=size, height=size, seed=1, steps=steps)

    async def run(prompt: str, **options: Any) -> tuple[str, int, float]:
        calls.clear()
        started_at = time.perf_counter()
        result = await service.generate(ask(prompt), **options)
        return result.cache, len(calls), time.perf_counter() - started_at

    rows = paraphrases()[:pairs]
    for row in rows:
        await run(row["prompt"])
    refined: list[dict[str, Any]] = []
    others = 0
    for row in rows:
        tier, refine_steps, refine_s = await run(
            row["reworded_en"], similar_threshold=threshold, similar_mode="refine"
        )
        _, plain_steps, plain_s = await run(row["reworded_en"], no_cache=True)
        if tier != "refined":
            others += 1
            continue
        refined.append({"steps": refine_steps, "plain_steps": plain_steps, "s": refine_s, "plain_s": plain_s})
    steps_refined = sum(r["steps"] for r in refined)
    steps_plain = sum(r["plain_steps"] for r in refined)
    time_refined = sum(r["s"] for r in refined)
    time_plain = sum(r["plain_s"] for r in refined)
    return {
        "pairs": pairs,
        "size": size,
        "steps": steps,
        "threshold": threshold,
        "refined": len(refined),
        "generated_plainly": others,
        "steps_per_refined_image": steps_refined / len(refined) if refined else None,
        "steps_per_plain_image": steps_plain / len(refined) if refined else None,
        "steps_saved_share": 1 - steps_refined / steps_plain if steps_plain else None,
        "wall_time_ratio": time_refined / time_plain if time_plain else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.8)
    args = parser.parse_args()
    result = measure(args.pairs, args.size, args.steps, args.threshold)
    print(json.dumps(result, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "refine-latest.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
