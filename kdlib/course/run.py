"""Train or distill from a config on the command line, with ``python`` or with ``torchrun``.

``python -m kdlib.course.run fit --config run.json`` trains a preset;
``python -m kdlib.course.run distill --config run.json`` distills a teacher into it. Every
knob is a field of :class:`RunConfig` (a JSON file sets any of them, ``--field value`` flags
override the file). The same command runs data-parallel under
``torchrun --nproc_per_node=N -m kdlib.course.run ...``: each process joins the group
(:func:`kdlib.parallel.setup`), :func:`kdlib.train.fit` does the rest, and only rank 0 prints
and writes ``student.pt`` and ``history.json`` into ``out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .. import parallel
from ..data import load
from ..guards import assert_smaller
from ..models import model as build_model
from ..train import History, fit
from ..validate import atomic_path

__all__ = ["RunConfig", "load_config", "main"]

COMMANDS = ("fit", "distill")


@dataclass
class RunConfig:
    """One run: what to train, on what, how. Field names are the config keys and flags."""

    data: str = "mnist-5k"  # a name from kdlib.known_datasets()
    n_train: int | None = None  # keep the first n_train training examples (None: all)
    n_test: int | None = None  # keep the first n_test test examples (None: all)
    model: str = "hinton-student"  # preset trained by `fit`; the student of `distill`
    teacher: str = "hinton-teacher"  # distill: teacher preset (larger than model), cached
    teacher_checkpoint: str | None = None  # distill: a state dict of that preset to use instead
    loss: str = "kd"  # distill: a name from kdlib.distill.LOSS_NAMES
    T: float = 4.0  # distill: temperature of the soft targets
    alpha: float = 0.9  # distill: weight of the soft loss against the label loss
    epochs: int = 5  # passes over the training split
    lr: float = 1e-3  # learning rate
    batch_size: int = 128  # global batch: examples per step over all processes together
    optimizer: str = "adam"  # "adam" or "sgd"
    weight_decay: float = 0.0  # L2 penalty
    schedule: str = "constant"  # "constant" or "cosine"
    seed: int = 0  # seeds the student's initial weights and the shuffling
    device: str | None = None  # None: cuda → mps → cpu; under torchrun, each process its GPU
    amp: bool | str = False  # mixed precision: False, True (fp16 on CUDA), "fp16", "bf16"
    out: str | None = None  # folder where rank 0 writes student.pt and history.json


_TYPES = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "int | None": (int, type(None)),
    "str | None": (str, type(None)),
    "bool | str": (bool, str),
}


def _check(key: str, value):
    names = {f.name: f for f in dataclasses.fields(RunConfig)}
    if key not in names:
        raise ValueError(f"unknown config key {key!r}; known keys: {', '.join(names)}")
    kinds = _TYPES[names[key].type]
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise ValueError(
            f"config key {key!r} must be {names[key].type}, got {value!r} ({type(value).__name__})"
        )
    return float(value) if names[key].type == "float" else value


def load_config(path: str | os.PathLike | None = None, **overrides) -> RunConfig:
    """A :class:`RunConfig` from defaults, then the JSON file at ``path``, then ``overrides``.

    Unknown keys and values of the wrong type raise ``ValueError`` naming the key.

    Example:
        >>> load_config(None, epochs=2).epochs
        2
    """
    values: dict = {}
    if path is not None:
        text = Path(path).read_text()
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from e
        if not isinstance(values, dict):
            raise ValueError(f"config file {path} must hold a JSON object of keys and values")
    values.update(overrides)
    return RunConfig(**{k: _check(k, v) for k, v in values.items()})


def _parse_value(text: str):
    """A flag's value as JSON (``3``, ``1e-3``, ``true``, ``null``), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kdlib.course.run",
        description="Train (fit) or distill a preset from a config; works under torchrun.",
    )
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("--config", help="JSON file of RunConfig fields")
    for f in dataclasses.fields(RunConfig):
        p.add_argument(f"--{f.name}", type=_parse_value, default=argparse.SUPPRESS)
    return p


def _teacher(cfg: RunConfig, data, device: torch.device, student: nn.Module) -> nn.Module:
    """The teacher preset, trained (cached) or from its checkpoint; a student that is not
    smaller than it is refused first, before any training."""
    teacher = build_model(cfg.teacher, input_shape=data.input_shape, num_classes=data.num_classes)
    assert_smaller(student, teacher)  # a student as large as its teacher compresses nothing
    if cfg.teacher_checkpoint is None:
        from .recipes import trained_teacher

        return trained_teacher(data, preset=cfg.teacher, device=device)
    state = torch.load(cfg.teacher_checkpoint, map_location="cpu", weights_only=True)
    teacher.load_state_dict(state)
    return teacher.to(device).eval()


def _save(cfg: RunConfig, command: str, student: nn.Module, history: History) -> None:
    """Write ``student.pt`` and ``history.json`` into ``cfg.out``, each atomically."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": command,
        "config": dataclasses.asdict(cfg),
        "rows": history.rows,
        "stop_reason": history.stop_reason,
        "info": {k: v for k, v in history.info.items() if isinstance(v, (int, float, str))},
    }
    state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    with atomic_path(out / "student.pt") as tmp:
        torch.save(state, tmp)
    with atomic_path(out / "history.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")


def main(argv: list[str] | None = None) -> tuple[nn.Module, History]:
    """Run ``fit`` or ``distill`` as the command line ``argv`` says; return the result.

    Joins the ``torchrun`` process group if there is one (and leaves it afterwards if it
    joined it here). Returns ``(student, history)`` on every rank.
    """
    args = vars(_parser().parse_args(argv))
    command, path = args.pop("command"), args.pop("config", None)
    cfg = load_config(path, **args)
    joined_here = "WORLD_SIZE" in os.environ and not dist.is_initialized()
    device = parallel.setup(cfg.device)
    amp_before = os.environ.get("KDLIB_AMP")
    try:
        data = load(cfg.data, device=device).subset(cfg.n_train, cfg.n_test)
        student = build_model(
            cfg.model, input_shape=data.input_shape, num_classes=data.num_classes, seed=cfg.seed
        )
        common = dict(
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            optimizer=cfg.optimizer,
            weight_decay=cfg.weight_decay,
            schedule=cfg.schedule,
            device=device,
            seed=cfg.seed,
            desc=f"{command} {cfg.model}",
        )
        # Through the environment, amp reaches every fit call, also those inside distill.
        os.environ["KDLIB_AMP"] = str(cfg.amp).lower()
        if command == "fit":
            history = fit(student, data, **common)
        else:
            from ..distill import distill

            teacher = _teacher(cfg, data, device, student)
            history = distill(
                student, teacher, data, loss=cfg.loss, T=cfg.T, alpha=cfg.alpha, **common
            )
        if parallel.is_main():
            # timings stay out of the line, so that it reads the same on every run
            skip = ("epoch", "seconds")
            last = {k: round(v, 4) for k, v in history.rows[-1].items() if k not in skip}
            print(
                f"{command} {cfg.model} on {cfg.data} ({len(data.X_train)} train): "
                f"{parallel.world_size()} process(es) on {device}, {history.epochs} epochs, "
                f"last epoch {last}",
                flush=True,
            )
            if cfg.out is not None:
                _save(cfg, command, student, history)
        return student, history
    finally:
        if amp_before is None:
            os.environ.pop("KDLIB_AMP", None)
        else:
            os.environ["KDLIB_AMP"] = amp_before
        if joined_here:
            parallel.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
