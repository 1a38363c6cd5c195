"""The course's results tables, from one command: ``python -m kdlib.course.results [SECTION ...]``.

Each section is a function in :data:`SECTIONS` (name → function returning the printed text);
``all`` runs them in order, and later topics add their own section to the dict. The
``distill`` section trains, over 3 seeds on ``mnist-5k``, the 800-800 student from scratch and
by MSE logit matching, soft-target KD and parameter distillation, and prints test accuracy
(mean ± std), agreement with the teacher, epochs and seconds, plus the share of the
teacher–scratch gap each method closes. The ``prune`` section prunes LeNet-300-100 by
magnitude (one shot and iteratively) from 50% to 98% sparsity, checks ≤ 10% of the weights
kept within 0.5 points over the seeds, and removes 50% / 75% of the 800-800 MLP's hidden units,
timing dense, masked-only and shrunk models in turns. The ``features`` section distils the
CNN teacher into the thin ``cnn-thin`` CNN by soft-target KD and by FitNets hints, attention
transfer and cosine matching added to it, on the whole training split and on a small transfer
set, and says which feature method beats scratch (by more than its std) and which beats KD.
The ``splits`` section re-runs the distill table's scratch and KD rows on five stratified
splits of the same data, each with its own teacher, to show how much the share of the gap
that KD closes depends on the one test split. The ``quant`` section quantizes the CNN teacher
to int8 (static, calibrated) and LeNet-300-100 (dynamic), with bytes on disk, latency ratios
and accuracy, compares 4-bit quantization-aware training with and without the teacher's soft
targets over the seeds, and runs prune → distill → quantize on one model. The README's
numbers come from this
command; the tests run the same functions on a short budget.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import quant
from ..data import Dataset, load
from ..distill import distill
from ..features import BETA_DEFAULTS, distill_features
from ..guards import assert_smaller
from ..metrics import (
    accuracy,
    agreement,
    compare_latency,
    count_params,
    macs,
    pareto_front,
    size_bytes,
)
from ..models import mlp
from ..models import model as build_model
from ..params import distill_params, low_rank
from ..prune import (
    iterative_prune,
    make_permanent,
    shrink,
    sparsity_report,
    structured_prune,
)
from ..train import History, evaluate, fit, predict
from .recipes import RECIPES, random_shift, train_preset, trained_teacher
from .sweeps import sparsity_sweep

__all__ = [
    "SECTIONS",
    "SEEDS",
    "Run",
    "distill_methods",
    "distill_runs",
    "feature_methods",
    "feature_verdicts",
    "deep_mlp_teacher",
    "epochs_to_reach",
    "format_table",
    "gap_closed",
    "summarize",
    "main",
    "format_costs",
    "pair_costs",
    "magnitude_rows",
    "shrink_rows",
    "SummaryMethod",
    "course_summary",
    "int8_bytes",
    "qat_runs",
    "quant_pipeline",
    "format_summary",
    "pruned_teacher",
    "reinitialised",
    "summary_methods",
    "summary_runs",
]

SEEDS = (0, 1, 2)
STUDENT = "hinton-student"  # the 800-800 MLP every row of the distill table trains
KD_TEACHER = "hinton-teacher"  # 1200-1200 MLP, dropout and ±2 px jitter: Hinton et al.'s setup
LOW_RANK = 256  # bottleneck width of the low-rank row (2.4 M → 1.1 M parameters)
LATENCY_BATCH = 256  # batch size of the latency column


@dataclass
class Run:
    """One trained student: its numbers and its history."""

    method: str  # row label
    teacher: str  # which teacher it learned from ("—" for scratch)
    seed: int  # seeds the student's initial weights and the batch order
    acc: float  # final test accuracy
    agreement: float  # top-1 test agreement with the row's teacher (scratch: KD_TEACHER)
    epochs: int  # epochs trained
    seconds: float  # training time (evaluation excluded)
    history: History = field(repr=False, default_factory=History)
    student: nn.Module | None = field(repr=False, default=None)  # the trained student


@dataclass(frozen=True)
class Method:
    """One row of the distill table: how to train the student."""

    name: str  # row label
    teacher: str  # "cnn-teacher", "hinton-teacher", "mlp-800x4" or "—"
    train: Callable[[nn.Module, nn.Module | None, Dataset, int, int], History]
    note: str = ""  # what a reader must know to interpret the row
    # builds the student from (teacher, data, seed); None: the run's student preset
    student: Callable[[nn.Module | None, Dataset, int], nn.Module] | None = None

    def build_student(
        self, teacher: nn.Module | None, data: Dataset, seed: int, preset: str = STUDENT
    ) -> nn.Module:
        """This row's untrained student: its own builder's, else ``preset`` from ``seed``."""
        return (self.student or _preset_student(preset))(teacher, data, seed)


def _recipe_kwargs(epochs: int, preset: str = STUDENT) -> dict:
    r = RECIPES[preset]
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


def _params(strategy: str | None, lr: float = 1e-2, tol: float = 2e-3):
    def train(student, teacher, data, seed, epochs):
        return distill_params(
            student, teacher, data, strategy, epochs, lr, T=4.0, tol=tol, seed=seed
        )

    return train


def _preset_student(preset: str):
    def build(teacher, data, seed):
        return build_model(
            preset, input_shape=data.input_shape, num_classes=data.num_classes, seed=seed
        )

    return build


def _low_rank_student(rank: int):
    def build(teacher, data, seed):
        return low_rank(teacher, rank)  # deterministic: the seed only orders the batches

    return build


def distill_methods(T: float = 4.0, alpha: float = 0.9, max_shift: int = 2) -> list[Method]:
    """The rows of the distill table, in order."""
    shift = random_shift(max_shift)
    return [
        Method("scratch", "—", _scratch(), "labels only, by the preset's recipe"),
        Method("MSE logits", KD_TEACHER, _kd("mse"), "mean((z_s − z_t)²), no labels"),
        Method(
            f"soft-target KD (T={T:g}, α={alpha:g})",
            KD_TEACHER,
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
            KD_TEACHER,
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
            f"params: low-rank (r={LOW_RANK})",
            "hinton-teacher",
            _params(None),
            "every weight matrix factorised by truncated SVD, then T²·KL until still",
            _low_rank_student(LOW_RANK),
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
    kwargs = _recipe_kwargs(epochs or r.epochs)
    fit(net, data, **kwargs, seed=seed, desc="mlp-800x4")
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
    student: str = STUDENT,
    reference: str = KD_TEACHER,
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
        student: the student preset every row trains (the features section uses a CNN).
        reference: the teacher that scratch rows' agreement is measured against.

    Returns:
        ``(runs, teacher_acc)``: the runs per method name, and each teacher's test accuracy.
    """
    methods = list(methods) if methods is not None else distill_methods()
    epochs = epochs or RECIPES[student].epochs
    needed = {m.teacher for m in methods} | {reference}
    teachers = dict(teachers or {})
    teachers.update(_teachers(data, needed - set(teachers), teacher_epochs))
    X_test = data.X_test
    teacher_test = {name: predict(t, X_test) for name, t in teachers.items()}  # logits, once
    teacher_acc = {name: accuracy(z, data.y_test) for name, z in teacher_test.items()}
    runs: dict[str, list[Run]] = {}
    for m in methods:
        for seed in seeds:
            teacher = teachers.get(m.teacher)
            net = m.build_student(teacher, data, seed, student)
            hist = m.train(net, teacher, data, seed, epochs)
            # scratch rows are compared with the KD rows' teacher
            against = teacher_test[m.teacher if teacher is not None else reference]
            run = Run(
                method=m.name,
                teacher=m.teacher,
                seed=seed,
                acc=hist.last("test_acc"),
                agreement=agreement(net, against, X_test),
                epochs=hist.epochs,
                seconds=hist.seconds + hist.info.get("cache_seconds", 0.0),
                history=hist,
                student=net,
            )
            runs.setdefault(m.name, []).append(run)
            if log is not None:
                log(f"  {m.name:<42} seed {seed}: acc {run.acc:.4f}, {run.seconds:.1f} s")
    return runs, teacher_acc


def pair_costs(
    pairs: dict[str, tuple[nn.Module, nn.Module]],
    input_shape: Sequence[int],
    batch_size: int = LATENCY_BATCH,
) -> list[dict]:
    """What each (student, teacher) pair costs: parameters, bytes, MACs and latency of both.

    Every distinct model is timed in the same :func:`compare_latency` run (in turns), so the
    latency ratios of all pairs are comparable. Returns one dict per pair, in order, with
    ``row`` and, for ``student`` and ``teacher``, ``params``, ``bytes``, ``macs`` and
    ``latency`` (seconds per batch of ``batch_size``).
    """
    models: dict[int, nn.Module] = {}
    for student, teacher in pairs.values():
        models.setdefault(id(student), student)
        models.setdefault(id(teacher), teacher)
    seconds = compare_latency(
        {str(k): m for k, m in models.items()}, input_shape, batch_size, rounds=3
    )
    rows = []
    for row, pair in pairs.items():
        costs = {"row": row}
        for who, m in zip(("student", "teacher"), pair, strict=True):
            costs[who] = {
                "params": count_params(m),
                "bytes": size_bytes(m),
                "macs": macs(m, input_shape),
                "latency": seconds[str(id(m))],
            }
        rows.append(costs)
    return rows


def format_costs(rows: list[dict], batch_size: int = LATENCY_BATCH) -> str:
    """A Markdown table of :func:`pair_costs`: each figure as student / teacher, and the ratio."""
    lines = [
        f"| row | parameters | bytes | MACs | latency (ms, batch {batch_size}) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        s, t = r["student"], r["teacher"]
        cells = []
        for key in ("params", "bytes", "macs"):
            cells.append(f"{s[key]:,} / {t[key]:,} ({t[key] / s[key]:.1f}× smaller)")
        lat = f"{1e3 * s['latency']:.2f} / {1e3 * t['latency']:.2f}"
        cells.append(f"{lat} ({t['latency'] / s['latency']:.1f}× faster)")
        lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


def epochs_to_reach(run: Run | History, target: float) -> int | None:
    """First epoch whose test accuracy is ≥ ``target`` (0 if the initial weights already are).

    ``run`` is a :class:`Run` or a :class:`~kdlib.train.History`. ``None`` if it never gets
    there. Epoch 0 uses ``history.info["init_acc"]`` when present.
    """
    hist = run.history if isinstance(run, Run) else run
    if hist.info.get("init_acc", -1.0) >= target:
        return 0
    for row in hist.rows:
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


def format_table(
    rows: list[dict], teacher_acc: dict[str, float] | None = None, timing: bool = True
) -> str:
    """A Markdown table of :func:`summarize`'s rows (accuracy in %, mean ± std).

    ``timing=False`` leaves out the seconds column, whose values change from run to run
    (notebooks checked by nbval print the table without it).
    """
    head = "| method | teacher | test accuracy (%) | agreement (%)¹ | epochs |"
    rule = "| --- | --- | --- | --- | --- |"
    if timing:
        head, rule = head + " seconds |", rule + " --- |"
    lines = [head, rule]
    for name, acc in (teacher_acc or {}).items():
        lines.append(f"| teacher `{name}` | — | {100 * acc:.1f} | — | — |" + (" — |" * timing))
    for r in rows:
        agree = f"{100 * r['agreement']:.1f}"
        teacher = "—" if r["teacher"] == "—" else f"`{r['teacher']}`"
        line = (
            f"| {r['method']} | {teacher} | {100 * r['acc']:.1f} ± {100 * r['acc_std']:.1f} "
            f"| {agree} | {r['epochs']:.1f} |"
        )
        lines.append(line + (f" {r['seconds']:.1f} |" if timing else ""))
    lines.append("")
    lines.append(f"¹ top-1 agreement with the row's teacher; scratch rows with `{KD_TEACHER}`.")
    return "\n".join(lines)


def _distill_section(args: argparse.Namespace) -> str:
    data = load(args.dataset)
    seeds = tuple(args.seeds)
    t0 = time.perf_counter()
    methods = distill_methods()
    trained = _teachers(data, {m.teacher for m in methods} | {KD_TEACHER}, None)
    runs, teacher_acc = distill_runs(
        data, seeds, args.epochs, methods, teachers=trained,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )  # fmt: skip
    rows = summarize(runs)
    by_name = {r["method"]: r for r in rows}
    scratch = by_name["scratch"]["acc"]
    teachers = {m.name: m.teacher for m in methods}
    out = [
        f"## Distillation on {data.name}: mean ± std over seeds {', '.join(map(str, seeds))}",
        "",
        format_table(rows, teacher_acc),
        "",
        f"Share of the teacher–scratch test-accuracy gap closed ({KD_TEACHER} "
        f"{100 * teacher_acc[KD_TEACHER]:.1f}%, scratch {100 * scratch:.1f}% "
        f"± {100 * by_name['scratch']['acc_std']:.1f}):",
    ]
    for r in rows:
        if r["method"] != "scratch" and not r["method"].startswith("params"):
            share = gap_closed(r["acc"], scratch, teacher_acc[KD_TEACHER])
            gain = 100 * (r["acc"] - scratch)
            out.append(f"  {r['method']:<42} {100 * share:6.1f}%  ({gain:+.1f} points)")
    # one student per row (seed 0's) against its teacher; scratch rows have no teacher
    pairs = {}
    for name, rs in runs.items():
        if teachers[name] != "—":
            pairs[name] = (rs[0].student, trained[teachers[name]])
    out += [
        "",
        "What each distilled student costs against its teacher (student / teacher; "
        "latency timed in turns in one run on this machine, 2 threads):",
        "",
        format_costs(pair_costs(pairs, data.input_shape)),
        "",
        f"Parameter distillation: epochs until the scratch accuracy ({100 * scratch:.1f}%) is "
        f"reached, against the scratch student's {by_name['scratch']['epochs']:.0f}:",
    ]
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
        f"Students: `{STUDENT}` (800-800 MLP, trained on the plain digits) in every row but "
        f"low-rank, which is `{KD_TEACHER}` factorised at rank {LOW_RANK}. Teachers: "
        f"`{KD_TEACHER}` (1200-1200 MLP, trained with dropout and ±2 px jitter: Hinton et "
        "al.'s MNIST setup) for the KD, top-units and low-rank rows; `mlp-800x4` (4×800 MLP, "
        "trained like the student) for every-other-layer. Teachers use seed 0; seconds are "
        "training time per run (cached teacher logits included), measured on this machine.",
        f"(section took {time.perf_counter() - t0:.0f} s)",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# The prune section: magnitude pruning of LeNet-300-100, structured shrink of the 800-800 MLP
PRUNE_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
PRUNE_MODEL = "lenet-300-100"  # Han et al.'s pruning MLP
SHRINK_MODEL = "hinton-student"  # the 800-800 MLP whose hidden units are removed
# Han et al.'s prune → fine-tune cycles as the prune section runs them.
ITERATIVE = dict(steps=5, finetune_epochs=3, lr_scale=0.3)


def magnitude_rows(
    dense: nn.Module,
    data: Dataset,
    sparsities: Sequence[float] = PRUNE_SPARSITIES,
    seed: int = 0,
    iterative: dict | None = None,
) -> list[dict]:
    """Global magnitude pruning of a trained model at each sparsity, with and without
    fine-tuning (one shot, and :func:`~kdlib.prune.iterative_prune` from the dense model).

    Returns one dict per sparsity: ``sparsity``, ``acc_oneshot``, ``acc_finetuned``,
    ``params_kept`` (nonzero parameters), ``dense_bytes`` and ``csr_bytes``.
    """
    lr = RECIPES[PRUNE_MODEL].lr
    oneshot = sparsity_sweep(dense, data, sparsities)
    rows = []
    for s, acc_oneshot in zip(oneshot.sparsities, oneshot.accuracy, strict=True):
        tuned = copy.deepcopy(dense)
        hist = iterative_prune(
            tuned, data, s, lr=lr, seed=seed, progress=False, **(iterative or ITERATIVE)
        )
        make_permanent(tuned)
        rows.append(
            {
                "sparsity": s,
                "acc_oneshot": acc_oneshot,
                "acc_finetuned": hist.last("test_acc"),
                "params_kept": count_params(tuned, nonzero=True),
                "dense_bytes": size_bytes(tuned),
                "csr_bytes": size_bytes(tuned, sparse=True),
            }
        )
    return rows


def shrink_rows(
    dense: nn.Module,
    data: Dataset,
    fractions: Sequence[float] = (0.5, 0.75),
    finetune_epochs: int = 5,
    seed: int = 0,
    rounds: int = 7,
) -> tuple[list[dict], dict[str, float]]:
    """Remove ``fractions`` of the hidden units (L1 norm), fine-tune the shrunk models, and
    time dense, masked-only and shrunk models in turns at batch 256.

    Returns:
        ``(rows, seconds)``: one dict per model (``model``, ``acc``, ``params``, ``macs``,
        ``latency``, ``ratio`` to dense), and the raw median latencies by model name.
    """
    shape = data.input_shape
    models = {"dense": dense}
    accs = {"dense": evaluate(dense, data)["accuracy"]}
    for f in fractions:
        masked = structured_prune(copy.deepcopy(dense), f)
        small = shrink(masked)
        hist = fit(small, data, epochs=finetune_epochs, lr=3e-4, seed=seed, progress=False)
        models[f"masked {f:.0%}"] = masked
        accs[f"masked {f:.0%}"] = evaluate(masked, data)["accuracy"]
        models[f"shrunk {f:.0%}"] = small
        accs[f"shrunk {f:.0%}"] = hist.last("test_acc")  # fit evaluated it after the last epoch
    seconds = compare_latency(models, shape, batch_size=256, rounds=rounds)
    rows = [
        {
            "model": name,
            "acc": accs[name],
            "params": count_params(m, nonzero=name.startswith("masked")),
            "macs": macs(m, shape),
            "latency": seconds[name],
            "ratio": seconds[name] / seconds["dense"],
        }
        for name, m in models.items()
    ]
    return rows, seconds


def _prune_section(args: argparse.Namespace) -> str:
    data = load(args.dataset)
    seeds = tuple(args.seeds)
    t0 = time.perf_counter()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    dense_nets, dense_acc = {}, {}
    for seed in seeds:
        net, hist = train_preset(PRUNE_MODEL, data, seed, epochs=args.epochs, progress=False)
        dense_nets[seed], dense_acc[seed] = net, hist.last("test_acc")
    rows = magnitude_rows(dense_nets[seeds[0]], data, seed=seeds[0])
    log(f"  {PRUNE_MODEL} sweep done ({time.perf_counter() - t0:.0f} s)")
    n_weights = count_params(dense_nets[seeds[0]])
    dense_bytes = size_bytes(dense_nets[seeds[0]])
    out = [
        f"## Magnitude pruning on {data.name}: {PRUNE_MODEL}, seed {seeds[0]}",
        "",
        "Global magnitude pruning of the trained model. One shot: prune, no training. "
        f"Fine-tuned: {ITERATIVE['steps']} prune → fine-tune cycles (cubic schedule, "
        f"{ITERATIVE['finetune_epochs']} epochs each at {ITERATIVE['lr_scale']}× the recipe's "
        "lr, masks held).",
        "",
        "| sparsity | one shot (%) | fine-tuned (%) | params kept | dense bytes | CSR bytes |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| dense | {100 * dense_acc[seeds[0]]:.1f} | — | {n_weights:,} | {dense_bytes:,} | — |",
    ]
    for r in rows:
        out.append(
            f"| {r['sparsity']:.0%} | {100 * r['acc_oneshot']:.1f} | "
            f"{100 * r['acc_finetuned']:.1f} | {r['params_kept']:,} | {r['dense_bytes']:,} | "
            f"{r['csr_bytes']:,} |"
        )
    out += ["", "CSR: 4-byte values + 4-byte column indices + row pointers per weight matrix."]
    # The section's target: at most 10% of the weights kept, within 0.5 points, mean of seeds.
    target = 0.92
    pruned = []
    for seed in seeds:
        net = copy.deepcopy(dense_nets[seed])
        lr = RECIPES[PRUNE_MODEL].lr
        hist = iterative_prune(net, data, target, lr=lr, seed=seed, progress=False, **ITERATIVE)
        pruned.append((hist.last("test_acc"), sparsity_report(net).sparsity))
    mean_dense = statistics.fmean(dense_acc.values())
    mean_pruned = statistics.fmean(a for a, _ in pruned)
    kept = 1 - statistics.fmean(s for _, s in pruned)
    out += [
        "",
        f"Iterative pruning to {target:.0%} sparsity over seeds {', '.join(map(str, seeds))}: "
        f"{kept:.1%} of the weights kept ({1 / kept:.1f}× fewer), test accuracy "
        f"{100 * mean_pruned:.2f}% vs dense {100 * mean_dense:.2f}% "
        f"({100 * (mean_pruned - mean_dense):+.2f} points).",
    ]
    log(f"  {PRUNE_MODEL} seeds done ({time.perf_counter() - t0:.0f} s)")
    dense, _ = train_preset(SHRINK_MODEL, data, seeds[0], epochs=args.epochs, progress=False)
    shrunk, _ = shrink_rows(dense, data, seed=seeds[0])
    out += [
        "",
        f"## Structured pruning on {data.name}: {SHRINK_MODEL} (800-800 MLP), seed {seeds[0]}",
        "",
        "Hidden units of fc1 and fc2 ranked by L1 norm; *masked*: the units zeroed by masks "
        "(same size, no fine-tuning); *shrunk*: the units removed with the next layer's "
        "inputs, then 5 epochs of fine-tuning. Latency: median forward time at batch 256 "
        f"on the CPU ({torch.get_num_threads()} threads), models timed in turns.",
        "",
        "| model | test accuracy (%) | parameters | MACs | latency (ms) | vs dense |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in shrunk:
        out.append(
            f"| {r['model']} | {100 * r['acc']:.1f} | {r['params']:,} | {r['macs']:,} | "
            f"{1e3 * r['latency']:.2f} | {r['ratio']:.2f}× |"
        )
    out += [
        "",
        "Masked parameters count only nonzero entries; the masked model still multiplies "
        "every zero, so its MACs and latency stay those of the dense model.",
        f"(section took {time.perf_counter() - t0:.0f} s)",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# summary section: every method of the course on one student size (notebook 09, the README)
SUMMARY_EPOCHS = 3  # epochs per run: one short budget, the same for every method
SUMMARY_KEEP = 0.25  # share of the teacher's channels and hidden units every student keeps
SUMMARY_LR = 3e-3  # from random weights: Adam with a cosine decay (the CNN recipes')
FINETUNE_LR = 1e-2  # from the teacher's weights: SGD with momentum, as parameter distillation


def pruned_teacher(teacher: nn.Module, keep: float = SUMMARY_KEEP) -> nn.Module:
    """A new dense model: ``teacher`` with only ``keep`` of every layer's units and channels.

    :func:`~kdlib.prune.structured_prune` ranks the units of every layer but the output one by
    the L1 norm of their weights and masks the rest; :func:`~kdlib.prune.shrink` then rebuilds
    the model without them. The teacher itself is not modified.
    """
    if not 0 < keep < 1:
        raise ValueError(f"keep must be a share of the units in (0, 1), got {keep!r}")
    return shrink(structured_prune(copy.deepcopy(teacher), 1 - keep))


def reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with the same layers and new random weights drawn from ``seed``."""
    net = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in net.modules():
        if m is not net and hasattr(m, "reset_parameters"):
            m.reset_parameters()  # PyTorch's default initialisation of each layer
    return net


@dataclass(frozen=True)
class SummaryMethod:
    """One row of the summary table: where the student starts and how it is trained."""

    name: str  # row label
    start: str  # "random" (fresh weights) or "teacher" (the pruned teacher's own weights)
    build: Callable[[nn.Module, int], nn.Module]  # (teacher, seed) -> student
    train: Callable[[nn.Module, nn.Module, Dataset, int, int], History]
    note: str = ""  # what a reader must know to interpret the row


def _start(start: str, keep: float) -> Callable[[nn.Module, int], nn.Module]:
    def build(teacher: nn.Module, seed: int) -> nn.Module:
        small = pruned_teacher(teacher, keep)
        return reinitialised(small, seed) if start == "random" else small

    return build


def _recipe(start: str) -> dict:
    # Adam's normalised steps move inherited weights far in the first epoch; SGD's steps
    # shrink with the gradient, so a student that starts close to its teacher stays close.
    if start == "random":
        return dict(lr=SUMMARY_LR, optimizer="adam", schedule="cosine")
    return dict(lr=FINETUNE_LR, optimizer="sgd", schedule="constant")


def _labels(start: str):
    def train(student, teacher, data, seed, epochs):
        return fit(student, data, epochs, **_recipe(start), seed=seed, desc="labels")

    return train


def _soft(loss: str, start: str, T: float, alpha: float):
    def train(student, teacher, data, seed, epochs):
        return distill(
            student, teacher, data, loss, epochs, T=T, alpha=alpha, **_recipe(start), seed=seed
        )

    return train


def _hint(T: float, alpha: float):
    def train(student, teacher, data, seed, epochs):
        return distill_features(
            student, teacher, data, FEATURE_PAIRS, "hint", epochs, T=T, alpha=alpha,
            **_recipe("random"), seed=seed,
        )  # fmt: skip

    return train


def _inherit_then_kl(T: float):
    def train(student, teacher, data, seed, epochs):
        return distill_params(student, teacher, data, None, epochs, FINETUNE_LR, T=T, seed=seed)

    return train


def summary_methods(
    T: float = 4.0, alpha: float = 0.9, keep: float = SUMMARY_KEEP
) -> list[SummaryMethod]:
    """The rows of the summary table, in order: every method of the course, one student size.

    Every student has the architecture of :func:`pruned_teacher` (``keep`` of the teacher's
    channels and units). The distillation rows start it from random weights and train with
    Adam; parameter distillation and the pruning rows start it from the teacher's own
    surviving weights and train with SGD (see ``SUMMARY_LR`` and ``FINETUNE_LR``).
    """
    kd = f"(T={T:g}, α={alpha:g})"
    fresh, inherited = _start("random", keep), _start("teacher", keep)
    M = SummaryMethod
    return [
        M("scratch", "random", fresh, _labels("random"), "labels only"),
        M(
            name=f"soft-target KD {kd}",
            start="random",
            build=fresh,
            train=_soft("kd", "random", T, alpha),
            note="Hinton et al.: soft targets + labels",
        ),
        M(
            name="MSE logits",
            start="random",
            build=fresh,
            train=_soft("mse", "random", T, alpha),
            note="Ba & Caruana: mean((z_s − z_t)²), no labels",
        ),
        M(
            name=f"feature KD: hint on stage2 + KD {kd}",
            start="random",
            build=fresh,
            train=_hint(T, alpha),
            note="FitNets hint loss after a 1×1 conv regressor, trained jointly with KD",
        ),
        M(
            name=f"parameter distillation (T={T:g})",
            start="teacher",
            build=inherited,
            train=_inherit_then_kl(T),
            note="inherit the top channels by L1 norm, then T²·KL until the weights are still",
        ),
        M(
            name="pruned (structured), fine-tuned",
            start="teacher",
            build=inherited,
            train=_labels("teacher"),
            note="the teacher shrunk, then labels only",
        ),
        M(
            name=f"pruned (structured) + KD {kd}",
            start="teacher",
            build=inherited,
            train=_soft("kd", "teacher", T, alpha),
            note="the teacher shrunk, then soft targets + labels",
        ),
    ]


def summary_runs(
    data: Dataset,
    teacher: nn.Module,
    seeds: Sequence[int] = SEEDS,
    epochs: int = SUMMARY_EPOCHS,
    methods: Sequence[SummaryMethod] | None = None,
    log: Callable[[str], None] | None = None,
    teacher_test: torch.Tensor | None = None,
) -> tuple[dict[str, list[Run]], dict[str, tuple[int, int]]]:
    """Build and train every summary method for every seed (the teacher is not modified);
    ``teacher_test``: the teacher's test logits, if the caller has them.

    Returns:
        ``(runs, sizes)``: the runs per method name, and each method's ``(nonzero
        parameters, bytes)`` after training.
    """
    methods = list(methods) if methods is not None else summary_methods()
    if teacher_test is None:
        teacher_test = predict(teacher, data.X_test)  # the teacher's test logits, once
    runs: dict[str, list[Run]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for m in methods:
        for seed in seeds:
            student = m.build(teacher, seed)
            hist = m.train(student, teacher, data, seed, epochs)
            run = Run(
                method=m.name,
                teacher="cnn-teacher",
                seed=seed,
                acc=hist.last("test_acc"),
                agreement=agreement(student, teacher_test, data.X_test),
                epochs=hist.epochs,
                seconds=hist.seconds + hist.info.get("cache_seconds", 0.0),
                history=hist,
                student=student,
            )
            runs.setdefault(m.name, []).append(run)
            sizes[m.name] = (
                count_params(student, nonzero=True),
                size_bytes(student),
            )
            if log is not None:
                log(f"  {m.name:<44} seed {seed}: acc {run.acc:.4f}, {run.seconds:.1f} s")
    return runs, sizes


def int8_bytes(model: nn.Module) -> int:
    """Bytes of every tensor a quantized model stores (int8 weights, their scales and
    zero-points, float biases): the int8 counterpart of :func:`~kdlib.metrics.size_bytes`."""
    return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))


def course_summary(
    data: Dataset,
    teacher: nn.Module | None = None,
    seeds: Sequence[int] = SEEDS,
    epochs: int = SUMMARY_EPOCHS,
    methods: Sequence[SummaryMethod] | None = None,
    log: Callable[[str], None] | None = None,
    int8: Sequence[str] | None = None,
) -> list[dict]:
    """The course's summary: the teacher, then every method's student, as table rows.

    Args:
        data: the data set.
        teacher: the trained teacher (default: :func:`~kdlib.course.recipes.trained_teacher`).
        seeds: student seeds: initial weights (random rows) and batch order (all rows).
        epochs: epochs per run, the same for every method.
        methods: rows to run (default :func:`summary_methods`).
        log: called with one line per finished run.
        int8: names of methods whose trained students also get a row quantized to static
            int8 (:func:`kdlib.quant.static_int8`, calibrated on ``CALIBRATION`` training
            images; ``bytes`` by :func:`int8_bytes`); default: the pruned + KD student.

    Returns:
        One dict per row: ``method``, ``start``, ``parameters`` (nonzero), ``bytes``,
        ``accuracy`` (mean over seeds), ``accuracy_std`` (0 for one seed), ``per_seed``
        (``{seed: accuracy}``), ``agreement`` (mean top-1 agreement with the teacher) and
        ``n`` (number of seeds; 0 for the teacher row, which is not trained here).
    """
    teacher = teacher if teacher is not None else trained_teacher(data)
    teacher_test = predict(teacher, data.X_test)
    runs, sizes = summary_runs(data, teacher, seeds, epochs, methods, log, teacher_test)
    t_acc = accuracy(teacher_test, data.y_test)
    rows = [
        {
            "method": "teacher (cnn-teacher)",
            "start": "—",
            "parameters": count_params(teacher, nonzero=True),
            "bytes": size_bytes(teacher),
            "accuracy": t_acc,
            "accuracy_std": 0.0,
            "per_seed": {},
            "agreement": 1.0,
            "n": 0,
        }
    ]
    starts = {m.name: m.start for m in (methods or summary_methods())}
    for name, rs in runs.items():
        acc, std = _mean_std([r.acc for r in rs])
        rows.append(
            {
                "method": name,
                "start": starts[name],
                "parameters": sizes[name][0],
                "bytes": sizes[name][1],
                "accuracy": acc,
                "accuracy_std": std,
                "per_seed": {r.seed: r.acc for r in rs},
                "agreement": statistics.fmean(r.agreement for r in rs),
                "n": len(rs),
            }
        )
    chosen = _int8_methods(runs) if int8 is None else list(int8)
    for name in chosen:
        if name not in runs:
            raise ValueError(f"int8: no summary method {name!r}; methods: {', '.join(runs)}")
        qs = [quant.static_int8(r.student, data.X_train[:CALIBRATION]) for r in runs[name]]
        logits = [predict(q, data.X_test) for q in qs]  # each int8 model runs once
        accs = [accuracy(z, data.y_test) for z in logits]
        acc, std = _mean_std(accs)
        rows.append(
            {
                "method": f"{name} → int8",
                "start": starts[name],
                "parameters": sizes[name][0],
                "bytes": int8_bytes(qs[0]),
                "accuracy": acc,
                "accuracy_std": std,
                "per_seed": {r.seed: a for r, a in zip(runs[name], accs, strict=True)},
                "agreement": statistics.fmean(agreement(z, teacher_test) for z in logits),
                "n": len(qs),
            }
        )
    return rows


CALIBRATION = 512  # training images that calibrate a static int8 model's activation ranges


def _int8_methods(runs: dict[str, list[Run]]) -> list[str]:
    """The summary's default int8 rows: the pruned student trained with KD."""
    return [n for n in runs if n.startswith("pruned (structured) + KD")]


def format_summary(rows: list[dict]) -> str:
    """A Markdown table of :func:`course_summary`'s rows (accuracy in %, mean ± std)."""
    lines = [
        "| method | starts from | parameters | bytes | test accuracy (%) | per seed (%) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        acc = f"{100 * r['accuracy']:.1f}"
        if r["n"] > 1:
            acc += f" ± {100 * r['accuracy_std']:.1f}"
        per_seed = ", ".join(f"{s}: {100 * a:.1f}" for s, a in r["per_seed"].items()) or "—"
        lines.append(
            f"| {r['method']} | {r['start']} | {r['parameters']:,} | {r['bytes']:,} "
            f"| {acc} | {per_seed} |"
        )
    return "\n".join(lines)


def _summary_section(args: argparse.Namespace) -> str:
    data = load(args.dataset)
    seeds = tuple(args.seeds)
    epochs = args.epochs or SUMMARY_EPOCHS
    t0 = time.perf_counter()
    rows = course_summary(
        data, seeds=seeds, epochs=epochs, log=lambda s: print(s, file=sys.stderr, flush=True)
    )
    front = pareto_front(rows, "bytes", "accuracy")
    return "\n".join(
        [
            f"## Summary on {data.name}: every method, one student size, {epochs} epochs each, "
            f"mean ± std over seeds {', '.join(map(str, seeds))}",
            "",
            format_summary(rows),
            "",
            "Pareto front (fewest bytes for the accuracy): "
            + " → ".join(f"{r['method']} ({r['bytes']:,} B)" for r in front),
            "",
            f"Every student keeps {SUMMARY_KEEP:.0%} of `cnn-teacher`'s channels and units "
            "(ranked by L1 norm). From random weights: Adam, cosine decay, lr "
            f"{SUMMARY_LR:g}; from the teacher's weights: SGD with momentum, lr {FINETUNE_LR:g}. "
            "The `→ int8` row is the pruned + KD students quantized to static int8 (weights "
            f"and activations, calibrated on {CALIBRATION} training images); its bytes are "
            "every stored tensor (int8 weights, scales, zero-points, float biases). "
            "Notebook 09 runs this table for one seed: with seed 0 its numbers are the `0:` "
            "entries.",
            f"(section took {time.perf_counter() - t0:.0f} s)",
        ]
    )


# --------------------------------------------------------------------------------------------
# Feature distillation: the course's CNN teacher → a thin CNN student (kdlib.features)
# --------------------------------------------------------------------------------------------
FEATURE_STUDENT = "cnn-thin"  # 4 and 8 channels against the teacher's 16 and 32
FEATURE_PAIRS = {"stage2": "stage2"}  # the last conv stage of each: (N, 8|32, 7, 7) maps
SMALL_TRANSFER = 1000  # images in the small transfer set (the teacher saw them and 3,000 more)
SMALL_EPOCHS = 20  # epochs on the small transfer set (as many steps as 5 epochs on all 4,000)


def _cnn_recipe(epochs: int) -> dict:
    r = RECIPES[FEATURE_STUDENT]
    # The table needs only the final accuracy: evaluating after every epoch would cost as
    # much as training on the small transfer set.
    return dict(
        epochs=epochs,
        lr=r.lr,
        batch_size=r.batch_size,
        schedule=r.schedule,
        evaluate_every=epochs,
    )


def _cnn_scratch(student, teacher, data, seed, epochs):
    return fit(student, data, **_cnn_recipe(epochs), seed=seed, desc="scratch")


def _cnn_kd(T: float, alpha: float):
    def train(student, teacher, data, seed, epochs):
        return distill(
            student, teacher, data, "kd", **_cnn_recipe(epochs), T=T, alpha=alpha, seed=seed
        )

    return train


def _cnn_features(loss: str, method: str = "joint", **kwargs):
    def train(student, teacher, data, seed, epochs):
        if method == "fitnets":
            kwargs["hint_epochs"] = max(2, epochs // 5)
        return distill_features(
            student, teacher, data, FEATURE_PAIRS, loss, **_cnn_recipe(epochs), method=method,
            seed=seed, desc=f"{loss}+KD", **kwargs,
        )  # fmt: skip

    return train


def feature_methods(T: float = 4.0, alpha: float = 0.9) -> list[Method]:
    """The rows of the features table: scratch, soft-target KD, then three feature methods.

    Every feature row uses the same soft-target KD (``T``, ``alpha``) as the KD row, so the
    difference between a feature row and the KD row is what the feature term adds. The
    FitNets row spends ``max(2, epochs // 5)`` extra hint epochs before its KD epochs.
    """
    kd = dict(T=T, alpha=alpha)
    beta = BETA_DEFAULTS
    return [
        Method("scratch", "—", _cnn_scratch, "labels only, by the preset's recipe"),
        Method(f"soft-target KD (T={T:g}, α={alpha:g})", "cnn-teacher", _cnn_kd(T, alpha)),
        Method(
            "hint+KD (FitNets, two stages)",
            "cnn-teacher",
            _cnn_features("hint", "fitnets", **kd),
            "hint stage (stage1–2 + 1×1 regressor), then KD",
        ),
        Method(
            f"AT+KD (β={beta['at']:g})",
            "cnn-teacher",
            _cnn_features("at", **kd),
            "one stage: KD + β·attention transfer",
        ),
        Method(
            f"cosine+KD (β={beta['cosine']:g})",
            "cnn-teacher",
            _cnn_features("cosine", **kd),
            "one stage: KD + β·(1 − cos) after a 1×1 regressor",
        ),
    ]


def feature_verdicts(rows: list[dict]) -> list[dict]:
    """Each feature row of :func:`summarize`'s rows against scratch and against KD.

    A method *beats scratch* when its mean accuracy exceeds the scratch mean by more than the
    scratch runs' standard deviation; it is *worse* when it falls short by more than that.
    ``vs_scratch`` and ``vs_kd`` are differences of mean accuracy (fractions, not points).
    """
    scratch = next((r for r in rows if r["method"] == "scratch"), None)
    kd = next((r for r in rows if r["method"].startswith("soft-target KD")), None)
    if scratch is None or kd is None:
        raise ValueError("feature_verdicts needs a 'scratch' row and a 'soft-target KD' row")
    out = []
    for r in rows:
        if r is scratch or r is kd:
            continue
        gain = r["acc"] - scratch["acc"]
        if gain > scratch["acc_std"]:
            verdict = "beats scratch"
        elif gain < -scratch["acc_std"]:
            verdict = "worse than scratch"
        else:
            verdict = "within scratch's std"
        out.append(
            {
                "method": r["method"],
                "vs_scratch": gain,
                "vs_kd": r["acc"] - kd["acc"],
                "verdict": verdict,
            }
        )
    return out


def _verdict_lines(rows: list[dict]) -> list[str]:
    scratch = next(r for r in rows if r["method"] == "scratch")
    lines = [
        f"Against scratch ({100 * scratch['acc']:.1f} ± {100 * scratch['acc_std']:.1f}%) and "
        "soft-target KD, in accuracy points (mean over seeds):"
    ]
    for v in feature_verdicts(rows):
        lines.append(
            f"  {v['method']:<30} vs scratch {100 * v['vs_scratch']:+5.1f}   "
            f"vs KD {100 * v['vs_kd']:+5.1f}   {v['verdict']}"
        )
    return lines


def _features_section(args: argparse.Namespace) -> str:
    data = load(args.dataset)
    seeds = tuple(args.seeds)
    t0 = time.perf_counter()
    teachers = {"cnn-teacher": trained_teacher(data)}  # trained on the whole training split
    small = data.subset(SMALL_TRANSFER, None)
    settings = [
        (f"all {len(data.X_train):,} training images", data, args.epochs),
        (
            f"a small transfer set: the first {SMALL_TRANSFER} training images",
            small,
            args.epochs or SMALL_EPOCHS,
        ),
    ]
    out = [
        f"## Feature distillation on {data.name}: cnn-teacher → {FEATURE_STUDENT}, "
        f"pairs {FEATURE_PAIRS}, mean ± std over seeds {', '.join(map(str, seeds))}",
    ]
    for title, d, epochs in settings:
        runs, teacher_acc = distill_runs(
            d,
            seeds,
            epochs,
            methods=feature_methods(),
            teachers=teachers,
            student=FEATURE_STUDENT,
            reference="cnn-teacher",
            log=lambda s: print(s, file=sys.stderr, flush=True),
        )
        rows = summarize(runs)
        out += ["", f"### Students trained on {title}", "", format_table(rows, teacher_acc)]
        out += ["", *_verdict_lines(rows)]
    out += [
        "",
        "The teacher was trained on all training images in both tables; in the second, the "
        "student sees only the small transfer set, so the teacher's outputs and features "
        "carry information its labels do not. Feature terms are added to the same KD as the "
        "KD row: a feature row above KD is what the feature term adds. Where it adds nothing, "
        "the usual reasons apply: the thin student has 8 channels to imitate the teacher's 32 "
        "with, so matching features competes with fitting the classes (a capacity gap); the "
        "regressor can absorb the mismatch instead of the student; and a hint placed at the "
        "last stage says little that the logits do not. Published CIFAR-100 tables (Tian et "
        "al. 2020) also show FitNets and AT below KD for most teacher–student pairs. "
        "Seconds are training time per run on this machine, teacher logits and features "
        "cached once and included.",
        f"(section took {time.perf_counter() - t0:.0f} s)",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# The splits section: how much the distill table's gap share owes to the one test split
SPLIT_SEEDS = (0, 1, 2, 3, 4)  # load(dataset, seed=s): other stratified splits of the same data


def split_shares(
    dataset: str = "mnist-5k",
    splits: Sequence[int] = SPLIT_SEEDS,
    seeds: Sequence[int] = SEEDS,
    epochs: int | None = None,
    T: float = 4.0,
    alpha: float = 0.9,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """The distill table's scratch and soft-target KD rows, on several splits of the data.

    Each split ``load(dataset, seed=s)`` gets its own ``hinton-teacher`` (seed 0, trained on
    that split's training images only) and its own students (``seeds``), trained exactly as
    in the distill table.

    Returns:
        One dict per split: ``split``, ``teacher``, ``scratch``, ``scratch_std``, ``kd``,
        ``kd_std`` (test accuracies), ``share`` (:func:`gap_closed` of the means) and
        ``n_test`` (test images).
    """
    wanted = ("scratch", f"soft-target KD (T={T:g}, α={alpha:g})")
    methods = [m for m in distill_methods(T, alpha) if m.name in wanted]
    rows = []
    for s in splits:
        data = load(dataset, seed=s)
        runs, teacher_acc = distill_runs(data, seeds, epochs, methods=methods, log=log)
        by_name = {r["method"]: r for r in summarize(runs)}
        scratch, kd = by_name[wanted[0]], by_name[wanted[1]]
        t = teacher_acc[KD_TEACHER]
        rows.append(
            dict(
                split=s,
                teacher=t,
                scratch=scratch["acc"],
                scratch_std=scratch["acc_std"],
                kd=kd["acc"],
                kd_std=kd["acc_std"],
                share=gap_closed(kd["acc"], scratch["acc"], t),
                n_test=len(data.X_test),
            )
        )
    return rows


def _splits_section(args: argparse.Namespace) -> str:
    t0 = time.perf_counter()
    seeds = tuple(args.seeds)
    rows = split_shares(
        args.dataset, SPLIT_SEEDS, seeds, args.epochs,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )  # fmt: skip
    out = [
        f"## The gap share on other splits of {args.dataset}: the distill table's scratch and "
        f"soft-target KD rows, mean ± std over student seeds {', '.join(map(str, seeds))}",
        "",
        "| split | teacher (%) | scratch (%) | KD (%) | gap closed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        split = f"{r['split']}{' (default)' if r['split'] == 0 else ''}"
        scratch = f"{100 * r['scratch']:.1f} ± {100 * r['scratch_std']:.1f}"
        kd = f"{100 * r['kd']:.1f} ± {100 * r['kd_std']:.1f}"
        out.append(
            f"| {split} | {100 * r['teacher']:.1f} | {scratch} | {kd} | {100 * r['share']:.1f}% |"
        )
    shares = [r["share"] for r in rows]
    mean, std = _mean_std(shares)
    gain = statistics.fmean(r["kd"] - r["scratch"] for r in rows)
    scratch_std = statistics.fmean(r["scratch_std"] for r in rows)
    gap_images = statistics.fmean((r["teacher"] - r["scratch"]) * r["n_test"] for r in rows)
    out += [
        "",
        f"Share of the gap closed over {len(rows)} splits: {100 * mean:.0f} ± {100 * std:.0f}%"
        f" (KD above scratch on {sum(r['kd'] > r['scratch'] for r in rows)} of {len(rows)}; "
        f"by {100 * gain:+.1f} points on average, against scratch's std over seeds of "
        f"{100 * scratch_std:.1f} points on average).",
        "Each split has its own teacher, trained on that split's training images only. "
        f"The teacher–scratch gap is {gap_images:.0f} test images on average (of "
        f"{rows[0]['n_test']:,}), so the share of it is a noisy number: one split's value "
        "says little.",
        f"(section took {time.perf_counter() - t0:.0f} s)",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# quant section: PTQ of the teacher and of an MLP, QAT with and without KD, the pipeline
QUANT_MLP = "lenet-300-100"  # the MLP of dynamic int8 and of the QAT rows
QAT_TEACHER = KD_TEACHER  # soft targets of the QAT rows: an MLP nine times the student
LATENCY_REPEATS = 3  # the latency ratios are a range over this many measurements
QAT_BITS = 4  # weight bits of quantization-aware training
QAT_EPOCHS = 5  # epochs of each QAT run (from random weights, Adam)
QAT_LR = 1e-3  # their learning rate


def qat_runs(
    data: Dataset,
    teacher: nn.Module,
    seeds: Sequence[int] = SEEDS,
    bits: int = QAT_BITS,
    epochs: int = QAT_EPOCHS,
    T: float = 4.0,
    alpha: float = 0.9,
) -> dict[str, list[float]]:
    """Test accuracy of ``bits``-bit QAT students (:data:`QUANT_MLP`), after conversion to
    real low-bit weights, trained on labels only or on ``teacher``'s soft targets + labels.
    ``teacher`` must have more parameters than the student (:func:`kdlib.guards.assert_smaller`).

    Returns:
        ``{"labels only": [acc per seed], "soft targets + labels": [acc per seed]}``.
    """
    assert_smaller(build_model(QUANT_MLP), teacher)
    out: dict[str, list[float]] = {"labels only": [], "soft targets + labels": []}
    teacher_logits = predict(teacher, data.X_train)  # the teacher runs once for every seed
    for seed in seeds:
        for how in out:
            student = quant.prepare_qat(build_model(QUANT_MLP, seed=seed), bits)
            if how == "labels only":
                fit(student, data, epochs, lr=QAT_LR, seed=seed, progress=False)
            else:
                distill(
                    student, teacher, data, "kd", epochs, lr=QAT_LR, T=T, alpha=alpha,
                    teacher_logits=teacher_logits, seed=seed, progress=False,
                )  # fmt: skip
            real = quant.convert_qat(student, bits)
            out[how].append(evaluate(real, data)["accuracy"])
    return out


def quant_pipeline(
    data: Dataset,
    teacher: nn.Module,
    seed: int = 0,
    keep: float = SUMMARY_KEEP,
    epochs: int = SUMMARY_EPOCHS,
    T: float = 4.0,
    alpha: float = 0.9,
) -> list[dict]:
    """Prune → distill → quantize on one model: ``teacher`` shrunk to ``keep`` of its units
    (:func:`pruned_teacher`), distilled from it for ``epochs`` (SGD, as the summary's
    teacher-started rows), then static int8. One row per stage: ``stage``, ``model``,
    ``parameters``, ``bytes`` (:func:`kdlib.quant.saved_bytes`) and ``accuracy``."""
    pruned = pruned_teacher(teacher, keep)
    distilled = copy.deepcopy(pruned)
    distill(
        distilled, teacher, data, "kd", epochs, T=T, alpha=alpha, **_recipe("teacher"),
        seed=seed, progress=False,
    )  # fmt: skip
    distilled.eval()
    stages = {
        "teacher (float32)": teacher,
        "pruned": pruned,
        "pruned + distilled": distilled,
        "pruned + distilled + int8": quant.static_int8(distilled, data.X_train[:CALIBRATION]),
    }
    return [
        {
            "stage": name,
            "model": net,
            "parameters": count_params(pruned if name.endswith("int8") else net),
            "bytes": quant.saved_bytes(net),
            "accuracy": evaluate(net, data)["accuracy"],
        }
        for name, net in stages.items()
    ]


def _timings(models: dict[str, nn.Module], input_shape) -> dict[int, list[dict[str, float]]]:
    """``{batch: [{name: seconds}, one per repeat]}`` at batch 1 and :data:`LATENCY_BATCH`:
    :data:`LATENCY_REPEATS` measurements, each timing every model in turns."""
    out: dict[int, list[dict[str, float]]] = {1: [], LATENCY_BATCH: []}
    for _ in range(LATENCY_REPEATS):
        for batch in out:
            out[batch].append(compare_latency(models, input_shape, batch, rounds=5))
    return out


def _latency_ratios(pairs: dict[str, tuple[nn.Module, nn.Module]], input_shape) -> dict:
    """``{name: {batch: [quantized / float seconds, one per repeat]}}`` for (quantized, float)
    pairs, from :func:`_timings`."""
    models = {}
    for name, (q, f) in pairs.items():
        models[f"{name} q"], models[f"{name} f"] = q, f
    times = _timings(models, input_shape)
    return {
        n: {b: [t[f"{n} q"] / t[f"{n} f"] for t in ts] for b, ts in times.items()} for n in pairs
    }


def _span(ratios: Sequence[float]) -> str:
    """``"1.53–1.65x"``: the range of repeated ratios (one value when they agree)."""
    lo, hi = f"{min(ratios):.2f}", f"{max(ratios):.2f}"
    return f"{lo}x" if lo == hi else f"{lo}–{hi}x"


def _quant_section(args: argparse.Namespace) -> str:
    t0 = time.perf_counter()
    data = load(args.dataset)
    seeds = tuple(args.seeds)
    teacher = trained_teacher(data)
    t_int8 = quant.static_int8(teacher, data.X_train[:CALIBRATION])
    mlp = trained_teacher(data, preset=QUANT_MLP)
    mlp_int8 = quant.dynamic_int8(mlp)
    ptq = [
        ("cnn-teacher", "static int8, calibrated", teacher, t_int8),
        (QUANT_MLP, "dynamic int8", mlp, mlp_int8),
    ]
    out = [
        f"## Quantization on {data.name}: post-training int8, 4-bit QAT with and without "
        "the teacher, prune → distill → quantize",
        "",
        "| model | int8 | float32 accuracy (%) | int8 accuracy (%) | float32 bytes | int8 bytes "
        "| smaller |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, how, f, q in ptq:
        fa, qa = evaluate(f, data)["accuracy"], evaluate(q, data)["accuracy"]
        fb, qb = quant.saved_bytes(f), quant.saved_bytes(q)
        out.append(
            f"| {name} | {how} | {100 * fa:.1f} | {100 * qa:.1f} | {fb:,} | {qb:,} "
            f"| {fb / qb:.2f}x |"
        )
    x = data.X_test[:LATENCY_BATCH]
    pairs = {
        "cnn-teacher, eager (int8 simulated)": (t_int8, teacher),
        f"{QUANT_MLP}, dynamic int8, eager": (mlp_int8, mlp),
    }
    try:
        pairs["cnn-teacher, both compiled (oneDNN int8)"] = (
            quant.compiled(t_int8, x),
            quant.compiled(teacher, x),
        )
    except Exception as err:  # no C++ compiler: eager only
        print(f"torch.compile unavailable ({type(err).__name__})", file=sys.stderr)
    ratios = _latency_ratios(pairs, data.input_shape)
    out += [
        "",
        f"Latency of the int8 model over its float32 model's, {torch.get_num_threads()} "
        f"threads, timed in turns; the range of {LATENCY_REPEATS} measurements in one run (other "
        "machines and loads give other ratios):",
        "",
        f"| model | batch 1 | batch {LATENCY_BATCH} |",
        "| --- | --- | --- |",
        *(f"| {n} | {_span(r[1])} | {_span(r[LATENCY_BATCH])} |" for n, r in ratios.items()),
    ]
    qat_teacher = trained_teacher(data, preset=QAT_TEACHER)
    qat = qat_runs(data, qat_teacher, seeds)
    ratio = assert_smaller(mlp, qat_teacher)  # teacher / student parameters
    out += [
        "",
        f"{QAT_BITS}-bit quantization-aware training of {QUANT_MLP} ({QAT_EPOCHS} epochs, "
        f"Adam lr {QAT_LR:g}, from random weights; teacher {QAT_TEACHER}, {ratio:.1f}x the "
        f"student's parameters, at {100 * evaluate(qat_teacher, data)['accuracy']:.1f}%), "
        f"test accuracy of the converted {QAT_BITS}-bit model, "
        f"seeds {', '.join(map(str, seeds))}:",
        "",
        "| QAT with | accuracy (%) | per seed (%) |",
        "| --- | --- | --- |",
    ]
    for how, accs in qat.items():
        mean, std = _mean_std(accs)
        per = ", ".join(f"{s}: {100 * a:.1f}" for s, a in zip(seeds, accs, strict=True))
        out.append(f"| {how} | {100 * mean:.1f} ± {100 * std:.1f} | {per} |")
    gap = statistics.fmean(qat["soft targets + labels"]) - statistics.fmean(qat["labels only"])
    out.append(f"\nSoft targets minus labels only: {100 * gap:+.1f} points.")
    rows = quant_pipeline(data, teacher, seed=seeds[0])
    timed = {r["stage"]: r["model"] for r in rows}
    try:
        timed = {n: quant.compiled(m, x) for n, m in timed.items()}
        how = "all compiled"
    except Exception:
        how = "eager (int8 simulated)"
    base = rows[0]["stage"]
    times = _timings(timed, data.input_shape)
    lat = {b: {n: [t[n] / t[base] for t in ts] for n in timed} for b, ts in times.items()}
    out += [
        "",
        f"Prune → distill → quantize (seed {seeds[0]}; keep {SUMMARY_KEEP:.0%} of the units, "
        f"{SUMMARY_EPOCHS} epochs of KD, static int8; latency {how}, over the teacher's, the "
        f"range of {LATENCY_REPEATS} measurements):",
        "",
        f"| stage | parameters | bytes on disk | accuracy (%) | latency batch 1 "
        f"| latency batch {LATENCY_BATCH} |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {r['stage']} | {r['parameters']:,} | {r['bytes']:,} | "
            f"{100 * r['accuracy']:.1f} | {_span(lat[1][r['stage']])} | "
            f"{_span(lat[LATENCY_BATCH][r['stage']])} |"
            for r in rows
        ),
        "",
        "Bytes on disk are `torch.save(model.state_dict())`. Eager int8 graphs simulate the "
        "integer arithmetic in float; compiled, oneDNN runs int8 kernels (without VNNI here: "
        "the course pins AVX2).",
        f"(section took {time.perf_counter() - t0:.0f} s)",
    ]
    return "\n".join(out)


# name -> function(args) returning the section's text; other topics add their sections here.
SECTIONS: dict[str, Callable[[argparse.Namespace], str]] = {
    "distill": _distill_section,
    "features": _features_section,
    "prune": _prune_section,
    "summary": _summary_section,
    "splits": _splits_section,
    "quant": _quant_section,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kdlib.course.results", description="Print the course's results tables."
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
