"""The course's results tables, from one command: ``python -m kdlib.results [SECTION ...]``.

Each section is a function in :data:`SECTIONS` (name → function returning the printed text);
``all`` runs them in order, and later topics add their own section to the dict. The
``distill`` section trains, over 3 seeds on ``mnist-5k``, the 800-800 student from scratch and
by MSE logit matching, soft-target KD and parameter distillation, and prints test accuracy
(mean ± std), agreement with the teacher, epochs and seconds, plus the share of the
teacher–scratch gap each method closes. The README's numbers come from this command; the tests
run the same functions on a short budget.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .data import Dataset, load
from .distill import distill, random_shift
from .metrics import agreement
from .models import mlp
from .models import model as build_model
from .params import distill_params
from .recipes import RECIPES, trained_teacher
from .train import History, fit, predict

__all__ = [
    "SECTIONS",
    "SEEDS",
    "Run",
    "distill_methods",
    "distill_runs",
    "deep_mlp_teacher",
    "epochs_to_reach",
    "format_table",
    "gap_closed",
    "summarize",
    "main",
]

SEEDS = (0, 1, 2)
STUDENT = "hinton-student"  # the 800-800 MLP every row of the distill table trains


@dataclass
class Run:
    """One trained student: its numbers and its history."""

    method: str  # row label
    teacher: str  # which teacher it learned from ("—" for scratch)
    seed: int  # seeds the student's initial weights and the batch order
    acc: float  # final test accuracy
    agreement: float  # top-1 test agreement with the row's teacher (scratch: cnn-teacher)
    epochs: int  # epochs trained
    seconds: float  # training time (evaluation excluded)
    history: History = field(repr=False, default_factory=History)


@dataclass(frozen=True)
class Method:
    """One row of the distill table: how to train the student."""

    name: str  # row label
    teacher: str  # "cnn-teacher", "hinton-teacher", "mlp-800x4" or "—"
    train: Callable[[nn.Module, nn.Module | None, Dataset, int, int], History]
    note: str = ""  # what a reader must know to interpret the row


def _recipe_kwargs(epochs: int) -> dict:
    r = RECIPES[STUDENT]
    return dict(epochs=epochs, lr=r.lr, batch_size=r.batch_size, schedule=r.schedule)


def _scratch(augment=None):
    def train(student, teacher, data, seed, epochs):
        return fit(
            student, data, **_recipe_kwargs(epochs), augment=augment, seed=seed, desc="scratch"
        )

    return train


def _kd(loss: str, **kwargs):
    def train(student, teacher, data, seed, epochs):
        return distill(student, teacher, data, loss, **_recipe_kwargs(epochs), seed=seed, **kwargs)

    return train


def _params(strategy: str, lr: float = 1e-2, tol: float = 2e-3):
    def train(student, teacher, data, seed, epochs):
        return distill_params(
            student, teacher, data, strategy, epochs, lr, T=4.0, tol=tol, seed=seed
        )

    return train


def distill_methods(T: float = 4.0, alpha: float = 0.9, max_shift: int = 2) -> list[Method]:
    """The rows of the distill table, in order."""
    shift = random_shift(max_shift)
    return [
        Method("scratch", "—", _scratch(), "labels only, by the preset's recipe"),
        Method("MSE logits", "cnn-teacher", _kd("mse"), "mean((z_s − z_t)²), no labels"),
        Method(
            f"soft-target KD (T={T:g}, α={alpha:g})",
            "cnn-teacher",
            _kd("kd", T=T, alpha=alpha),
            "teacher logits cached once",
        ),
        Method(
            f"scratch + shifts (±{max_shift} px)",
            "—",
            _scratch(shift),
            "control: augmentation alone",
        ),
        Method(
            f"soft-target KD + shifts (T={T:g}, α={alpha:g})",
            "cnn-teacher",
            _kd("kd", T=T, alpha=alpha, augment=shift),
            "teacher run on every shifted batch",
        ),
        Method(
            "params: top-units",
            "hinton-teacher",
            _params("top-units"),
            "inherit 800 of 1200 units, then T²·KL until still",
        ),
        Method(
            "params: svd", "hinton-teacher", _params("svd"), "truncated-SVD projection, then KL"
        ),
        Method(
            "params: every-other-layer",
            "mlp-800x4",
            _params("every-other-layer"),
            "fc1, fc3, fc5 of a 4×800 MLP, then KL",
        ),
    ]


def deep_mlp_teacher(data: Dataset, seed: int = 0, epochs: int | None = None) -> nn.Module:
    """A 4×800 MLP trained like the 800-800 student: the teacher for every-other-layer."""
    torch.manual_seed(seed)
    net = mlp(data.in_features, [800] * 4, data.num_classes)
    r = RECIPES[STUDENT]
    fit(net, data, **_recipe_kwargs(epochs or r.epochs), seed=seed, desc="mlp-800x4")
    return net.eval()


def _teachers(data: Dataset, names: set[str], epochs: int | None) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {}
    for name in sorted(names - {"—"}):
        if name == "mlp-800x4":
            out[name] = deep_mlp_teacher(data, epochs=epochs)
        else:
            out[name] = trained_teacher(data, preset=name)
    return out


def distill_runs(
    data: Dataset,
    seeds: Sequence[int] = SEEDS,
    epochs: int | None = None,
    methods: Sequence[Method] | None = None,
    teacher_epochs: int | None = None,
    teachers: dict[str, nn.Module] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, list[Run]], dict[str, float]]:
    """Train every method for every seed.

    Args:
        data: the data set.
        seeds: student seeds (the teachers are fixed: seed 0, trained by their recipes).
        epochs: epochs per run (default: the student's recipe, 20); the most epochs for
            parameter distillation, which stops earlier when its parameters stop moving.
        methods: rows to run (default :func:`distill_methods`).
        teacher_epochs: override the 4×800 teacher's epochs (for quick tests).
        teachers: trained teachers by name, instead of training or loading them (tests).
        log: called with one line per finished run.

    Returns:
        ``(runs, teacher_acc)``: the runs per method name, and each teacher's test accuracy.
    """
    methods = list(methods) if methods is not None else distill_methods()
    epochs = epochs or RECIPES[STUDENT].epochs
    needed = {m.teacher for m in methods} | {"cnn-teacher"}
    teachers = dict(teachers or {})
    teachers.update(_teachers(data, needed - set(teachers), teacher_epochs))
    X_test = data.X_test
    teacher_acc = {
        name: float((predict(t, X_test).argmax(1) == data.y_test).float().mean())
        for name, t in teachers.items()
    }
    runs: dict[str, list[Run]] = {}
    for m in methods:
        for seed in seeds:
            student = build_model(
                STUDENT, input_shape=data.input_shape, num_classes=data.num_classes, seed=seed
            )
            teacher = teachers.get(m.teacher)
            hist = m.train(student, teacher, data, seed, epochs)
            # scratch rows are compared with the KD rows' teacher
            reference = teacher if teacher is not None else teachers["cnn-teacher"]
            run = Run(
                method=m.name,
                teacher=m.teacher,
                seed=seed,
                acc=hist.last("test_acc"),
                agreement=agreement(student, reference, X_test),
                epochs=hist.epochs,
                seconds=hist.seconds + hist.info.get("cache_seconds", 0.0),
                history=hist,
            )
            runs.setdefault(m.name, []).append(run)
            if log is not None:
                log(f"  {m.name:<42} seed {seed}: acc {run.acc:.4f}, {run.seconds:.1f} s")
    return runs, teacher_acc


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def gap_closed(student_acc: float, scratch_acc: float, teacher_acc: float) -> float:
    """Share of the teacher–scratch accuracy gap that a student closes.

    ``(student_acc − scratch_acc) / (teacher_acc − scratch_acc)``: 1 means the student
    matches the teacher, 0 the scratch student, below 0 worse than scratch.
    """
    if teacher_acc <= scratch_acc:
        raise ValueError(
            f"the teacher ({teacher_acc:.4f}) is not better than scratch ({scratch_acc:.4f}): "
            "there is no gap to close"
        )
    return (student_acc - scratch_acc) / (teacher_acc - scratch_acc)


def epochs_to_reach(run: Run, target: float) -> int | None:
    """First epoch whose test accuracy is ≥ ``target`` (0 if the initial weights already are).

    ``None`` if it never gets there. Epoch 0 uses ``history.info["init_acc"]`` when present.
    """
    if run.history.info.get("init_acc", -1.0) >= target:
        return 0
    for row in run.history.rows:
        if row.get("test_acc", -1.0) >= target:
            return int(row["epoch"])
    return None


def summarize(runs: dict[str, list[Run]]) -> list[dict]:
    """One dict per method: mean and std of accuracy, agreement, epochs and seconds."""
    rows = []
    for name, rs in runs.items():
        acc, acc_std = _mean_std([r.acc for r in rs])
        rows.append(
            {
                "method": name,
                "teacher": rs[0].teacher,
                "acc": acc,
                "acc_std": acc_std,
                "agreement": statistics.fmean(r.agreement for r in rs),
                "epochs": statistics.fmean(r.epochs for r in rs),
                "seconds": statistics.fmean(r.seconds for r in rs),
                "n": len(rs),
            }
        )
    return rows


def format_table(rows: list[dict], teacher_acc: dict[str, float] | None = None) -> str:
    """A Markdown table of :func:`summarize`'s rows (accuracy in %, mean ± std)."""
    lines = [
        "| method | teacher | test accuracy (%) | agreement (%)¹ | epochs | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, acc in (teacher_acc or {}).items():
        lines.append(f"| teacher `{name}` | — | {100 * acc:.1f} | — | — | — |")
    for r in rows:
        agree = f"{100 * r['agreement']:.1f}"
        teacher = "—" if r["teacher"] == "—" else f"`{r['teacher']}`"
        lines.append(
            f"| {r['method']} | {teacher} | {100 * r['acc']:.1f} ± {100 * r['acc_std']:.1f} "
            f"| {agree} | {r['epochs']:.1f} | {r['seconds']:.1f} |"
        )
    lines.append("")
    lines.append("¹ top-1 agreement with the row's teacher; scratch rows with `cnn-teacher`.")
    return "\n".join(lines)


def _distill_section(args: argparse.Namespace) -> str:
    data = load(args.dataset)
    seeds = tuple(args.seeds)
    t0 = time.perf_counter()
    runs, teacher_acc = distill_runs(
        data, seeds, args.epochs, log=lambda s: print(s, file=sys.stderr, flush=True)
    )
    rows = summarize(runs)
    by_name = {r["method"]: r for r in rows}
    scratch = by_name["scratch"]["acc"]
    out = [
        f"## Distillation on {data.name}: {STUDENT} (800-800 MLP) students, "
        f"mean ± std over seeds {', '.join(map(str, seeds))}",
        "",
        format_table(rows, teacher_acc),
        "",
        "Share of the teacher–scratch test-accuracy gap closed (cnn-teacher "
        f"{100 * teacher_acc['cnn-teacher']:.1f}%, scratch {100 * scratch:.1f}%):",
    ]
    for r in rows:
        if r["teacher"] == "cnn-teacher" or r["method"].startswith("scratch +"):
            share = gap_closed(r["acc"], scratch, teacher_acc["cnn-teacher"])
            out.append(f"  {r['method']:<42} {100 * share:6.1f}%")
    out += [
        "",
        f"Parameter distillation: epochs until the scratch accuracy ({100 * scratch:.1f}%)",
    ]
    out.append(f"is reached, against the scratch student's {by_name['scratch']['epochs']:.0f}:")
    for name, rs in runs.items():
        if not name.startswith("params"):
            continue
        reached = [epochs_to_reach(r, scratch) for r in rs]
        stops = sorted({r.history.stop_reason.split(":")[0] for r in rs})
        init = statistics.fmean(r.history.info["init_acc"] for r in rs)
        shown = ", ".join("never" if e is None else str(e) for e in reached)
        out.append(
            f"  {name:<28} per seed: {shown:<16} (accuracy before training "
            f"{100 * init:.1f}%; stop: {', '.join(stops)})"
        )
    out += [
        "",
        "Teachers: `cnn-teacher` (the course's CNN) for the KD rows; `hinton-teacher` "
        "(1200-1200 MLP) for top-units and svd; `mlp-800x4` (4×800 MLP, trained like the "
        "student) for every-other-layer, since weights can only be inherited between MLPs. "
        "Teachers use seed 0; seconds are training time per run (cached teacher logits "
        "included), measured on this machine.",
        f"(section took {time.perf_counter() - t0:.0f} s)",
    ]
    return "\n".join(out)


# name -> function(args) returning the section's text; other topics add their sections here.
SECTIONS: dict[str, Callable[[argparse.Namespace], str]] = {
    "distill": _distill_section,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kdlib.results", description="Print the course's results tables."
    )
    parser.add_argument(
        "sections", nargs="*", default=["all"], help=f"'all' or any of {', '.join(SECTIONS)}"
    )
    parser.add_argument("--dataset", default="mnist-5k", help="data set (default mnist-5k)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="seeds")
    parser.add_argument("--epochs", type=int, default=None, help="override epochs per run")
    args = parser.parse_args(argv)
    names = list(SECTIONS) if "all" in args.sections else args.sections
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: all, {', '.join(SECTIONS)}")
    for name in names:
        print(SECTIONS[name](args), flush=True)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
