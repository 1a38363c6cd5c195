"""Data parallelism with ``torch.distributed``: the same kdlib code on several processes.

Under ``torchrun`` every process (a *rank*) holds a full copy of the model and of the in-memory
data set. :func:`setup` joins the process group that torchrun describes in environment
variables (gloo on CPU, NCCL on CUDA, one GPU per process) and :func:`cleanup` leaves it.
Nothing else changes in user code: :func:`kdlib.train.fit` (and so ``distill`` and
``distill_features``, which train through it) notices an initialised group and then wraps the
trained modules in ``DistributedDataParallel``, gives each rank its share of every global
batch, all-reduces the epoch metrics so every rank holds the same history, and lets only
rank 0 show progress. A teacher is never wrapped: it is not trained, so there is nothing to
synchronise, and every rank simply runs its own copy. :func:`rank`, :func:`world_size` and
:func:`is_main` answer "who am I?" with or without a group (0, 1 and True on one process).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["setup", "cleanup", "is_distributed", "rank", "world_size", "is_main"]


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


def setup(device: str | torch.device | None = None, backend: str | None = None) -> torch.device:
    """Join the process group that ``torchrun`` set up; return this process's device.

    Outside torchrun (no ``WORLD_SIZE`` in the environment) this only picks the device, so a
    script that calls it runs unchanged with ``python`` and with ``torchrun``.

    Args:
        device: ``None`` picks cuda → mps → cpu (see :func:`kdlib.train.get_device`); under
            torchrun with CUDA each process takes GPU ``LOCAL_RANK`` of its machine.
        backend: ``"gloo"`` or ``"nccl"``; default NCCL for CUDA devices, gloo otherwise.

    Example:
        >>> device = kdlib.parallel.setup()   # under: torchrun --nproc_per_node=2 train.py
        >>> kdlib.fit(student, data.to(device), epochs=3)   # DDP inside, batches sharded
        >>> kdlib.parallel.cleanup()
    """
    from .train import get_device

    dev = get_device(device)
    if "WORLD_SIZE" not in os.environ or (dist.is_available() and dist.is_initialized()):
        return _local_cuda(dev)
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
    """Wait for every rank, then leave the process group (a no-op without one).

    Call it before the script ends. gloo's worker threads release the tensors of the last
    collectives on their own time, and need Python's GIL for that; if the interpreter is
    already shutting down by then, the process aborts ("terminate called without an active
    exception"). A DDP model keeps its process group alive past ``destroy_process_group``,
    so those threads outlive it: the short pause below lets them finish first.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        time.sleep(0.1)  # releases the GIL: the workers retire the finished collectives
        dist.destroy_process_group()


def _local_cuda(dev: torch.device) -> torch.device:
    """Give a bare ``cuda`` the index of this process's GPU, so collectives and DDP agree."""
    if dev.type == "cuda" and dev.index is None and is_distributed():
        return torch.device("cuda", torch.cuda.current_device())
    return dev


# -------------------------------------------------------------------------------------------
# What kdlib.train.fit uses under a process group.
class _Trained(nn.Module):
    """The model and its ``extra_modules`` (projectors) as one module, so one DDP syncs both.

    Its forward is the model's: DDP's bookkeeping runs on every ``loss_fn`` call of the
    model, while projectors, called directly inside ``loss_fn``, still get their gradients
    averaged because DDP hooks every parameter it was given.
    """

    def __init__(self, model: nn.Module, extra_modules: Sequence[nn.Module]):
        super().__init__()
        self.model = model
        self.extra = nn.ModuleList(extra_modules)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


def _wrap(
    model: nn.Module,
    extra_modules: Sequence[nn.Module],
    trained: Iterable[nn.Parameter],
    device: torch.device,
) -> nn.Module:
    """``DistributedDataParallel`` over the model and extra modules.

    Parameters the optimiser does not train (e.g. a frozen head in a FitNets hint stage) are
    left out of the gradient all-reduce: DDP would otherwise wait for gradients that never
    come. DDP's constructor broadcasts rank 0's parameters and buffers, so every rank starts
    from the same weights whatever its own initialisation was.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    joint = _Trained(model, extra_modules)
    ids = {id(p) for p in trained}
    ignore = [n for n, p in joint.named_parameters() if id(p) not in ids]
    if ignore:
        DDP._set_params_and_buffers_to_ignore_for_model(joint, ignore)
    ids_ = [device.index] if device.type == "cuda" and device.index is not None else None
    return DDP(joint, device_ids=ids_)


def _comm_device() -> torch.device:
    """Where small tensors for collectives live: CUDA for NCCL, CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(values: Sequence[float], op: str = "sum") -> list[float]:
    """Sum (or max) a few numbers over all ranks; every rank gets the result."""
    t = torch.tensor(list(values), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


def _broadcast(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (any picklable value)."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _sync_buffers(modules: Iterable[nn.Module]) -> None:
    """Copy rank 0's buffers (batch-norm statistics) to every rank.

    Inside each forward DDP does this before the step, but every rank then updates its own
    running statistics from its own shard, so after the last step they differ slightly.
    """
    for m in modules:
        for b in m.buffers():
            dist.broadcast(b, src=0)
