"""Latency of the 800-800 MLP at batch 256: dense vs masked-only vs physically shrunk.

Removing 50% of the hidden units of both hidden layers leaves 0.375× the MACs; masking the same
units leaves every multiply in place. A masked model also recomputes ``weight_orig ×
weight_mask`` in a forward pre-hook on every call, which makes it a little slower than dense;
the "zeroed" row (masks made permanent: the same zeros in plain weights) isolates that cost.
All models are timed in turns (dense, masked, shrunk, dense, ...) in one process with
:func:`kdlib.compare_latency`, so machine noise hits them alike; the ratios to dense are what
count. Weights are the untrained initial ones: the time of a forward pass does not depend on
their values. Ratios are printed at 1 thread and at torch's default thread count: on a busy
machine, threads that wait for each other can swamp the difference in work.
"""

from __future__ import annotations

import copy

import torch

import kdlib


def main(preset: str = "hinton-student", batch_size: int = 256, rounds: int = 9) -> dict:
    """Print MACs and latency ratios to dense, at 1 thread and at torch's default threads.

    Returns ``{threads: {model: latency / dense latency}}``.
    """
    dense = kdlib.model(preset, seed=0).eval()
    masked_units = kdlib.structured_prune(copy.deepcopy(dense), 0.5)
    models = {
        "dense": dense,
        "masked 50% units": masked_units,
        "masked 90% weights": kdlib.prune_to_sparsity(copy.deepcopy(dense), 0.9),
        # the same zeros as "masked 50% units", stored in plain dense weights: no mask hook
        "zeroed 50% units": kdlib.make_permanent(
            kdlib.structured_prune(copy.deepcopy(dense), 0.5)
        ),
        "shrunk 50% units": kdlib.shrink(masked_units),
        "shrunk 75% units": kdlib.shrink(kdlib.structured_prune(copy.deepcopy(dense), 0.75)),
    }
    macs = {name: kdlib.macs(m) for name, m in models.items()}
    default = torch.get_num_threads()
    out = {}
    for threads in sorted({1, default}):
        torch.set_num_threads(threads)
        try:
            seconds = kdlib.compare_latency(models, batch_size=batch_size, rounds=rounds)
        finally:
            torch.set_num_threads(default)
        print(
            f"\n## pruning and latency ({preset}, batch {batch_size}, {threads} thread(s), "
            f"{rounds} rounds in turns)"
        )
        print(
            f"  {'model':<20}{'MACs/example':>14}{'MACs ratio':>12}{'ms':>9}{'latency ratio':>15}"
        )
        ratios = {name: t / seconds["dense"] for name, t in seconds.items()}
        for name, t in seconds.items():
            print(
                f"  {name:<20}{macs[name]:>14,}{macs[name] / macs['dense']:>12.3f}"
                f"{1e3 * t:>9.2f}{ratios[name]:>15.2f}"
            )
        print(
            f"  shrunk 50% / dense = {ratios['shrunk 50% units']:.2f} (target ≤ 0.5); "
            f"masked / dense = {ratios['masked 50% units']:.2f}, "
            f"zeroed / dense = {ratios['zeroed 50% units']:.2f} (expected about 1.0)"
        )
        out[threads] = ratios
    return out


if __name__ == "__main__":
    main()
