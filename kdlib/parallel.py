"""Devices (:func:`get_device`), mixed precision (:func:`mixed_precision`) and ``torchrun`` data
parallelism: every process (a *rank*) holds the model and the data; :func:`setup` joins the group
and :func:`kdlib.train.fit` calls :func:`wrap` (DDP), :func:`finish_epoch`, :func:`all_reduce`,
:func:`average` and :func:`broadcast`. Without a group each is the one-process identity.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "setup", "cleanup", "is_distributed", "rank", "world_size", "is_main", "get_device",
    "mixed_precision", "MixedPrecision", "wrap", "finish_epoch", "all_reduce", "average",
    "broadcast", "explain_errors"
]  # fmt: skip


def is_distributed() -> bool:
    """True inside an initialised process group of two or more processes."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the group (0 without a group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes in the group (1 without a group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, the process that logs and saves (and on a lone process)."""
    return rank() == 0


def get_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else ``$KDLIB_DEVICE``, else the best available: cuda → mps → cpu.

    Inside a process group a bare ``"cuda"`` means this process's GPU.
    """
    device = device if device is not None else (os.environ.get("KDLIB_DEVICE") or None)
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} was asked for, but CUDA is not available")
    elif torch.cuda.is_available():
        dev = torch.device("cuda")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    else:
        return torch.device("cpu")
    if dev.type == "cuda" and dev.index is None and is_distributed():
        return torch.device("cuda", torch.cuda.current_device())
    return dev


def setup(device: str | torch.device | None = None, backend: str | None = None) -> torch.device:
    """Join ``torchrun``'s process group and return this process's device; without ``torchrun``
    only pick the device, so one script runs both ways.

    Args:
        device: ``None`` picks cuda → mps → cpu; under torchrun with CUDA, GPU ``LOCAL_RANK``.
        backend: ``"gloo"`` or ``"nccl"`` (default: NCCL for CUDA, gloo otherwise).

    Example:
        >>> device = kdlib.parallel.setup()   # under: torchrun --nproc_per_node=2 train.py
        >>> kdlib.fit(student, data.to(device), epochs=3)   # DDP inside, batches sharded
        >>> kdlib.parallel.cleanup()
    """
    dev = get_device(device)
    if "WORLD_SIZE" not in os.environ or (dist.is_available() and dist.is_initialized()):
        return dev
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; install a full build")
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    elif dev.type == "mps":
        dev = torch.device("cpu")  # no collective backend speaks MPS; data parallel on CPU
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    dist.init_process_group(backend)
    return dev


def cleanup() -> None:
    """Wait for every rank, then leave the process group (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        time.sleep(0.1)  # releases the GIL: the workers retire the finished collectives
        dist.destroy_process_group()


@dataclass
class MixedPrecision:
    """How the forward runs and the backward steps under one ``amp`` setting."""

    autocast: object  # context manager around forward and loss
    scaler: object | None  # float16 gradient scaler, or None
    label: str  # "off", "fp16", "bf16", or why it is off

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        """Zero the gradients, back-propagate ``loss`` (scaled for float16) and step."""
        opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()


def mixed_precision(amp: bool | str | None, device: torch.device) -> MixedPrecision:
    """How training runs under an ``amp`` setting on ``device``.

    ``False``: off. ``True``: float16 with a gradient scaler on CUDA, off elsewhere (one
    script runs on a laptop and on a GPU). ``"fp16"``: CUDA only. ``"bf16"``: float32's range, no
    scaler, CUDA or CPU. ``None``: ``$KDLIB_AMP`` (``0``, ``1``, ``fp16``, ``bf16``), else off.
    """
    if amp is None:
        amp = os.environ.get("KDLIB_AMP", "0").lower()
        amp = {"0": False, "": False, "false": False, "1": True, "true": True}.get(amp, amp)
    if amp is False or (amp is True and device.type != "cuda"):
        return MixedPrecision(
            nullcontext(), None, "off" if amp is False else f"off (no CUDA on {device})"
        )
    if amp is True or amp == "fp16":
        if device.type != "cuda":
            raise ValueError(f"amp='fp16' needs a CUDA device, but training runs on {device}")
        scaler = torch.amp.GradScaler("cuda")
        return MixedPrecision(torch.autocast("cuda", dtype=torch.float16), scaler, "fp16")
    if amp == "bf16":
        return MixedPrecision(torch.autocast(device.type, dtype=torch.bfloat16), None, "bf16")
    raise ValueError(f"amp must be one of False, True, 'fp16' or 'bf16'; got {amp!r}")


class _Trained(nn.Module):
    """The model and its ``extra_modules`` (projectors) as one module, so one DDP syncs both."""

    def __init__(self, model: nn.Module, extra_modules: Sequence[nn.Module]):
        super().__init__()
        self.model = model
        self.extra = nn.ModuleList(extra_modules)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


def wrap(
    model: nn.Module,
    extra_modules: Sequence[nn.Module],
    trained: Iterable[nn.Parameter],
    device: torch.device,
) -> nn.Module:
    """``model`` itself on one process; in a group, one ``DistributedDataParallel`` over the model
    and ``extra_modules``, leaving parameters outside ``trained`` out of the all-reduce.
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    joint = _Trained(model, extra_modules)
    ids = {id(p) for p in trained}
    ignore = [n for n, p in joint.named_parameters() if id(p) not in ids]
    if ignore:
        DDP._set_params_and_buffers_to_ignore_for_model(joint, ignore)
    ids_ = [device.index] if device.type == "cuda" and device.index is not None else None
    return DDP(joint, device_ids=ids_)


def finish_epoch(
    loss_sum: float, seen: int, seconds: float, modules: Iterable[nn.Module]
) -> tuple[float, float]:
    """Mean loss and seconds of an epoch over all ranks; rank 0's buffers (batch-norm
    statistics, which drift apart per shard) copied to every rank.
    """
    if not is_distributed():
        return loss_sum / seen, seconds
    loss_sum, seen = all_reduce([loss_sum, seen])
    seconds = all_reduce([seconds], op="max")[0]
    for m in modules:
        for b in m.buffers():
            dist.broadcast(b, src=0)
    return loss_sum / seen, seconds


def all_reduce(values: Sequence[float], op: str = "sum") -> list[float]:
    """Sum (or max) a few numbers over all ranks; every rank gets the result."""
    if not is_distributed():
        return [float(v) for v in values]
    dev = torch.device("cpu")
    if dist.get_backend() == "nccl":
        dev = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor(list(values), dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


def average(row: dict) -> dict:
    """The numeric entries of ``row`` averaged over the ranks (other entries kept)."""
    keys = sorted(
        k for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    )
    if not keys or not is_distributed():
        return row
    sums = all_reduce([float(row[k]) for k in keys])
    return {**row, **{k: v / world_size() for k, v in zip(keys, sums, strict=True)}}


def broadcast(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (any picklable value)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@contextmanager
def explain_errors():
    """Turn DDP's "finished reduction" error into advice on ``params=``."""
    try:
        yield
    except RuntimeError as e:
        if is_distributed() and "finished reduction" in str(e):
            raise RuntimeError(
                "under torch.distributed every parameter the optimiser trains must get a "
                "gradient at every step; pass params= with only the parameters this loss "
                f"trains (fit then leaves the others out of DDP's all-reduce). DDP said: {e}"
            ) from e
        raise
