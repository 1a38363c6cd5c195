"""Throughput of ``kdlib.fit`` against a minimal hand-written PyTorch loop.

Both train the same model (same initial weights) on the same batches for the same epochs,
alternating A, B, A, B, ... in one process so that machine noise hits both alike. The ratio
of median throughputs (examples per second) is what counts, not the absolute numbers.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

import kdlib


def _hand_written(model, data, epochs, lr, batch_size, seed):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    X, y = data.X_train, data.y_train
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def _kdlib(model, data, epochs, lr, batch_size, seed):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.perf_counter()
    # evaluate_every=0: the hand-written loop does no evaluation either.
    kdlib.fit(
        model, data, epochs=epochs, lr=lr, optimizer=opt, batch_size=batch_size,
        seed=seed, progress=False, evaluate_every=0, device="cpu",
    )  # fmt: skip
    return time.perf_counter() - t0


def main(preset: str = "hinton-student", epochs: int = 2, rounds: int = 5) -> float:
    data = kdlib.load("mnist-5k")
    n = len(data.X_train) * epochs
    times = {"hand-written": [], "kdlib.fit": []}
    for r in range(rounds):
        for name, run in (("hand-written", _hand_written), ("kdlib.fit", _kdlib)):
            model = kdlib.model(preset, seed=0)
            times[name].append(run(model, data, epochs, 1e-3, 128, seed=r))
    print(f"\n## kdlib.fit vs a hand-written loop ({preset}, {epochs} epochs × {rounds} rounds)")
    for name, ts in times.items():
        print(f"  {name:<14} median {n / statistics.median(ts):9.0f} examples/s")
    ratio = statistics.median(times["hand-written"]) / statistics.median(times["kdlib.fit"])
    print(f"  throughput ratio kdlib.fit / hand-written = {ratio:.3f}  (target ≥ 0.95)")
    return ratio


if __name__ == "__main__":
    main()
