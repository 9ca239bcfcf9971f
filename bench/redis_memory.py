"""What one cached image costs in Redis: record bytes and Redis memory per entry, by size.

    python -m bench.redis_memory [--sizes 256,512,1024] [-n 8]

Generates `n` images per size with the tiny model (in-process, the real engine and
the real PNG encoder with its embedded parameters), stores them through the Redis
tier into a fresh `redis-server`, and reads Redis's own accounting: `MEMORY USAGE`
per key (value, key, expiry and the allocator's rounding: what `maxmemory` must
hold per entry). The growth of `used_memory` is not used: with few entries it is
dominated by the client's query buffer, which held the last SET. The tiny model paints noise, which PNG
cannot compress: its images are the upper bound of a PNG at that size (raw RGB);
the real model's photographs compress to roughly half or two thirds of that.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from bench.procs import RedisServer


async def measure(sizes: list[int], n: int, models_dir: Path, redis_url: str) -> list[dict[str, float]]:
    from cache import DEFAULT_NAMESPACE, LayeredCache
    from cache.redis_tier import RedisTier
    from pipeline.engine import Engine
    from pipeline.request import GenerationRequest
    from pipeline.service import GenerationService

    engine = Engine("tiny", models_dir)
    engine.start()
    tier = RedisTier(redis_url, ttl_s=7 * 86400)
    service = GenerationService(engine, LayeredCache([tier]))
    client = tier.target.client()
    rows = []
    try:
        for size in sizes:
            records, usage = [], []
            for i in range(n):
                request = GenerationRequest(
                    prompt=f"a lighthouse, study {i}", width=size, height=size, seed=i
                )
                result = await service.generate(request)
                name = tier.redis_key(DEFAULT_NAMESPACE, result.key)
                records.append(client.strlen(name))
                usage.append(client.memory_usage(name, samples=0))
            rows.append(
                {
                    "size": size,
                    "record_bytes": statistics.mean(records),
                    "memory_usage": statistics.mean(usage),
                    "raw_rgb_bytes": size * size * 3,
                }
            )
    finally:
        engine.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256,512,1024", help="square sizes, comma-separated")
    parser.add_argument("-n", type=int, default=8, help="images per size (default 8)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp)).start()
        try:
            rows = asyncio.run(measure(sizes, args.n, Path(tmp) / "models", redis.url))
        finally:
            redis.kill()
    print(f"{'size':>10} {'record KB':>10} {'MEMORY USAGE KB':>16} {'raw RGB KB':>11}")
    for r in rows:
        print(
            f"{r['size']:>5}x{r['size']:<4} {r['record_bytes'] / 1024:>10.1f} {r['memory_usage'] / 1024:>16.1f} "
            f"{r['raw_rgb_bytes'] / 1024:>11.1f}"
        )


if __name__ == "__main__":
    main()
