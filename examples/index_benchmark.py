"""Exercise 2: how much recall do IVFFlat and HNSW trade for speed?

Loads random unit vectors (10,000 x 1536 by default) into PostgreSQL, runs the same top-10
cosine queries with no index (the exact answer), with IVFFlat sweeping ``ivfflat.probes`` and
with HNSW sweeping ``hnsw.ef_search``, prints recall@10 and latency for each, and draws recall
against latency to a PNG. ``vecorm bench`` runs the same code::

    python examples/index_benchmark.py                           # 10,000 x 1536, ~30 s
    python examples/index_benchmark.py --rows 2000 --dimensions 128 --plot small.png
    python examples/index_benchmark.py --data clustered          # closer to real embeddings
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import vecorm
from vecorm.tools.bench import BenchConfig, format_table, plot, run_benchmark


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--dimensions", type=int, default=1536)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--data", choices=("random", "clustered"), default="random")
    parser.add_argument("--plot", default="index_benchmark.png", help="PNG to write")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)

    config = BenchConfig(
        rows=args.rows,
        dimensions=args.dimensions,
        queries=args.queries,
        data=args.data,
        ef_search=(10, 20, 40, 80, 160, 320),  # the HNSW sweep; IVFFlat's probes: 1, 2, 4 ...
    )
    with vecorm.database(args.database_url) as url:
        engine = vecorm.create_engine(url)
        result = run_benchmark(engine, config, progress=lambda step: print(step, file=sys.stderr))
        engine.dispose()

    print(format_table(result))
    reaching = [item for item in result.of("hnsw") if item.recall >= 0.9]
    best = min(reaching, key=lambda item: item.median_ms, default=None)
    if best is not None:
        exact = result.of("none")[0]
        print(
            f"\nHNSW reaches recall {best.recall:.2f} at {best.setting}: "
            f"{exact.median_ms / best.median_ms:.1f}x faster than the exact scan"
        )
    print(f"plot: {plot(result, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
