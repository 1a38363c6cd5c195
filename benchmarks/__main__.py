"""`python -m benchmarks [NAME ...]` (what `make bench` runs). Names: see BENCHMARKS."""

import sys

from . import kd_cache, presets, prune_latency, train_loop

BENCHMARKS = {
    "fit": train_loop.main,
    "presets": presets.main,
    "kd-cache": kd_cache.main,
    "prune-latency": prune_latency.main,
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
        return 2
    for name in names:
        BENCHMARKS[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
