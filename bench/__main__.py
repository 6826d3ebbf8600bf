"""`python -m bench NAME [ARGS]`: runs the benchmark module bench/NAME.py."""

from __future__ import annotations

import importlib
import logging
import sys

BENCHMARKS = (
    "gpu", "index", "lexical", "load", "maps", "near-duplicates", "pdfs", "peer", "qdrant", "query", "render", "search",
    "sroie", "stores", "tags", "ui", "words",
)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m bench {{{','.join(BENCHMARKS)}}} [args]", file=sys.stderr)  # noqa: T201 - CLI usage
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # faiss reports at INFO each CPU build it tried and could not load (AVX-512, AVX2) as a ModuleNotFoundError
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    # a hyphenated name (near-duplicates) runs its module (bench/near_duplicates.py)
    return importlib.import_module(f"bench.{argv[0].replace('-', '_')}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
