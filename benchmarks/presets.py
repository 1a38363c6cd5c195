"""Accuracy and training time of the course's presets trained by their recipes, over seeds.

These are the README's "teacher and scratch student" numbers. Training time is wall-clock on
this machine for the whole recipe (evaluation after each epoch excluded).
"""

from __future__ import annotations

import statistics
import time

import torch

import kdlib


def main(presets=("cnn-teacher", "hinton-student"), seeds=(0, 1, 2)) -> dict:
    data = kdlib.load("mnist-5k")
    print(f"\n## presets trained by their recipes on mnist-5k ({torch.get_num_threads()} threads)")
    print(f"  {'preset':<16}{'epochs':>7}{'test accuracy':>22}{'train seconds':>16}")
    out = {}
    for name in presets:
        accs, secs = [], []
        for seed in seeds:
            t0 = time.perf_counter()
            _, hist = kdlib.course.train_preset(
                name, data, seed=seed, progress=False, device="cpu"
            )
            secs.append(time.perf_counter() - t0)
            accs.append(100 * hist.last("test_acc"))
        mean, std = statistics.mean(accs), statistics.stdev(accs)
        print(
            f"  {name:<16}{kdlib.course.RECIPES[name].epochs:>7}{mean:>13.1f} ± {std:.1f} %"
            f"{statistics.mean(secs):>14.1f} s"
        )
        out[name] = (mean, std, statistics.mean(secs))
    return out


if __name__ == "__main__":
    main()
