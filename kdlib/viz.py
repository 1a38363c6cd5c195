"""The course's plots, so notebook cells stay short.

Every function draws with matplotlib onto a given or new ``Axes``/``Figure`` and returns it;
none of them calls ``plt.show()``, so notebooks and tests decide what to display.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

__all__ = ["sample_grid"]


def sample_grid(data, n_per_class: int = 8, split: str = "train", title: str | None = None):
    """A grid of example images: one row per class, ``n_per_class`` columns.

    Returns:
        The matplotlib ``Figure``.
    """
    X, y = (data.X_train, data.y_train) if split == "train" else (data.X_test, data.y_test)
    X = data.unnormalize(X.detach().cpu())
    y = y.cpu()
    fig, axes = plt.subplots(
        data.num_classes, n_per_class, figsize=(n_per_class * 0.6, data.num_classes * 0.6)
    )
    for c in range(data.num_classes):
        idx = torch.nonzero(y == c).flatten()[:n_per_class]
        for j in range(n_per_class):
            ax = axes[c, j]
            ax.set_axis_off()
            if j < len(idx):
                ax.imshow(X[idx[j], 0], cmap="gray_r", vmin=0, vmax=1)
        axes[c, 0].set_title(data.classes[c], fontsize=7, loc="left", x=-0.6, y=0.2)
    fig.suptitle(title or f"{data.name}: {n_per_class} {split} examples per class", fontsize=9)
    fig.tight_layout()
    return fig
