"""Cost of distillation with cached teacher logits against plain training of the same student.

Both train ``hinton-student`` (same initial weights, same batches) on ``mnist-5k``: plain
``kdlib.fit`` on labels, and ``kdlib.distill`` with the soft-target KD loss and the teacher's
logits computed once before training. They alternate A, B, A, B, ... in one process so that
machine noise hits both alike, and the ratio of median seconds per epoch is what counts. The
one-off cost of computing the cached logits is reported separately, amortised over the
student's recipe (20 epochs), and the per-batch teacher is shown for comparison.
"""

from __future__ import annotations

import statistics

import kdlib


def _epoch_seconds(hist) -> float:
    return statistics.median(hist["seconds"])


def main(epochs: int = 3, rounds: int = 5, preset: str = "hinton-student") -> float:
    data = kdlib.load("mnist-5k")
    teacher = kdlib.course.trained_teacher(data, progress=False)
    common = dict(epochs=epochs, lr=1e-3, evaluate_every=0, progress=False, device="cpu")
    times: dict[str, list[float]] = {"plain fit": [], "KD, cached logits": []}
    cache_seconds = []
    for r in range(rounds):
        net = kdlib.model(preset, seed=0)
        times["plain fit"].append(_epoch_seconds(kdlib.fit(net, data, seed=r, **common)))
        net = kdlib.model(preset, seed=0)
        hist = kdlib.distill(net, teacher, data, "kd", cache_teacher_logits=True, seed=r, **common)
        times["KD, cached logits"].append(_epoch_seconds(hist))
        cache_seconds.append(hist.info["cache_seconds"])
    net = kdlib.model(preset, seed=0)
    per_batch = kdlib.distill(
        net, teacher, data, "kd", cache_teacher_logits=False, seed=0, **common
    )
    plain = statistics.median(times["plain fit"])
    cached = statistics.median(times["KD, cached logits"])
    cache = statistics.median(cache_seconds)
    recipe_epochs = kdlib.course.RECIPES[preset].epochs
    print(
        f"\n## KD with cached teacher logits vs plain training ({preset}, cnn-teacher, "
        f"{epochs} epochs × {rounds} rounds)"
    )
    print(f"  plain fit            median {plain:.3f} s/epoch")
    print(
        f"  KD, cached logits    median {cached:.3f} s/epoch "
        f"(+ {cache:.2f} s once to compute the cache)"
    )
    print(f"  KD, per-batch teacher       {_epoch_seconds(per_batch):.3f} s/epoch (one run)")
    ratio = cached / plain
    amortised = (cached + cache / recipe_epochs) / plain
    print(f"  time ratio KD cached / plain per epoch = {ratio:.3f}  (target ≤ 1.10)")
    print(f"  with the cache amortised over {recipe_epochs} epochs = {amortised:.3f}")
    return ratio


if __name__ == "__main__":
    main()
