"""What each process runs in the 2-process test (tests/test_parallel.py), and its reference.

Under ``torchrun --nproc_per_node=2 tests/ddp_worker.py FOLDER`` every rank runs the scenarios
below and saves its own parameters and history as ``FOLDER/<scenario>-rank<r>.pt``; the test
runs the same scenarios in one process (:func:`scenarios`) and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import kdlib
from kdlib import parallel
from kdlib.course import run


def _hint(config: Path):
    """A FitNets-like hint stage: the loss reads the first hidden layer through a hook and a
    projector (an extra module); the rest of the model is not trained (params=)."""
    cfg = run.load_config(config)
    data = kdlib.load(cfg.data).subset(cfg.n_train, cfg.n_test)
    student = kdlib.model(cfg.model, seed=cfg.seed)
    target = kdlib.model(cfg.model, seed=cfg.seed + 1)  # fixed features to match
    proj = nn.Linear(32, 32)
    feats = {}
    student.fc1.register_forward_hook(lambda m, i, o: feats.__setitem__("f_s", o))

    def loss_fn(model, X, y, idx):
        model(X)  # through DDP when distributed; the hook reads the layer
        with torch.no_grad():
            f_t = target.act1(target.fc1(target.flatten(X)))
        return F.mse_loss(proj(feats["f_s"]), f_t)

    hist = kdlib.fit(
        student, data, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
        loss_fn=loss_fn, extra_modules=[proj], params=[*student.fc1.parameters(),
        *proj.parameters()], device="cpu", progress=False,
    )  # fmt: skip
    return {**student.state_dict(), **{f"proj.{k}": v for k, v in proj.state_dict().items()}}, hist


def _features(config: Path, method: str):
    """distill_features on a vector layer (a Linear projector): FitNets' hint stage then KD
    stage, or the joint loss."""
    cfg = run.load_config(config)
    data = kdlib.load(cfg.data).subset(cfg.n_train, cfg.n_test)
    teacher = kdlib.model(cfg.teacher)
    teacher.load_state_dict(torch.load(cfg.teacher_checkpoint, weights_only=True))
    student, projectors = kdlib.model(cfg.model, seed=cfg.seed), {}
    stages = {"method": "fitnets", "hint_epochs": 1} if method == "fitnets" else {}
    hist = kdlib.distill_features(
        student, teacher, data, {"fc1": "fc1"}, "hint", epochs=1, lr=cfg.lr,
        batch_size=cfg.batch_size, seed=cfg.seed, device="cpu", progress=False,
        projectors=projectors, **stages,
    )  # fmt: skip
    proj = {f"proj.{k}": v for k, v in projectors["fc1"].state_dict().items()}
    return {**student.state_dict(), **proj}, hist


def scenarios(config: Path) -> dict[str, tuple[dict, kdlib.History]]:
    """Every scenario's ``(state_dict, history)``, in this process (with or without a group)."""
    out = {}
    for command in ("fit", "distill"):
        student, hist = run.main([command, "--config", str(config)])
        out[command] = (student.state_dict(), hist)
    out["hint"] = _hint(config)
    for method in ("fitnets", "joint"):
        out[f"features-{method}"] = _features(config, method)
    return out


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    parallel.setup("cpu")
    for name, (state, hist) in scenarios(folder / "config.json").items():
        record = {"state": state, "rows": hist.rows, "info": dict(hist.info)}
        torch.save(record, folder / f"{name}-rank{parallel.rank()}.pt")
    parallel.cleanup()
