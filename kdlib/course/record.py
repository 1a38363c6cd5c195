"""Record what a learner's function returns, as data; replay it to the checker elsewhere.

Grading must not trust the learner's Python process: code there can replace the checker,
``print`` or ``torch.allclose``. So the grader splits a check in two.

- **Inside the sandbox** (the submission's kernel), :func:`record_exercise` runs the exercise's
  checker with the learner's function wrapped in a recorder, and writes, for every call, only
  data: what came back (tensors, numbers, strings, tuples, torch.nn layers rebuilt from their
  settings and weights), how the call changed its arguments (tensor values; for modules,
  their parameters with their gradients, buffers such as batch-norm statistics and pruning
  masks, and train/eval modes, so that training loops can be judged), and the gradients of a
  returned loss. Tensors go to a NumPy ``.npz`` read with ``allow_pickle=False``, the rest
  to JSON. The checker's verdict there is thrown away.
- **In the grader's own process**, :func:`replay_exercise` runs the same checker on the same
  inputs (its cases come from fixed seeds) with a stand-in function that answers each call
  with the recorded data. The verdict is computed there, from kdlib's references, and code
  from the submission never runs in this process: a recorded module is rebuilt only from a
  list of torch.nn classes, a recorded exception only names its type.

Whatever the sandbox writes, the worst it can do is report outputs; a pass needs outputs
that equal the reference's on the grader's inputs.
"""

from __future__ import annotations

import builtins
import inspect
import json
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..validate import atomic_path

__all__ = ["record_exercise", "replay_exercise", "RecordError"]

# Layers a recorded module may be rebuilt from (their forward is torch's own code).
_LAYERS: dict[str, type[nn.Module]] = {
    c.__name__: c
    for c in (
        nn.Sequential,
        nn.ModuleList,
        nn.ModuleDict,
        nn.Linear,
        nn.Bilinear,
        nn.Conv1d,
        nn.Conv2d,
        nn.ConvTranspose2d,
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.ReLU,
        nn.ReLU6,
        nn.LeakyReLU,
        nn.ELU,
        nn.GELU,
        nn.SiLU,
        nn.Tanh,
        nn.Sigmoid,
        nn.Softmax,
        nn.LogSoftmax,
        nn.Flatten,
        nn.Unflatten,
        nn.Dropout,
        nn.Dropout2d,
        nn.MaxPool1d,
        nn.MaxPool2d,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool2d,
        nn.AdaptiveMaxPool2d,
        nn.Identity,
    )
}
_MAX_JSON = 32 * 2**20  # bytes of a record's JSON the grader will read
_MAX_NPZ = 256 * 2**20  # bytes of its tensors
_MAX_DEPTH = 32


class RecordError(Exception):
    """A record that cannot be read back (too big, malformed, not data)."""


# ============================================================================================
# Inside the sandbox: encode
# ============================================================================================
class _Encoder:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def tensor(self, t: torch.Tensor) -> dict:
        key = f"t{len(self.arrays)}"
        x = t.detach().cpu()
        dtype = str(x.dtype).removeprefix("torch.")
        if x.is_sparse or x.is_quantized:
            return {"unsupported": f"a {x.layout} tensor"}
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        self.arrays[key] = x.contiguous().numpy().copy()  # the call may change x later
        out = {"t": key, "dtype": dtype, "requires_grad": bool(t.requires_grad)}
        if isinstance(t, nn.Parameter):
            out["param"] = True
        return out

    def value(self, x, refs: Mapping[int, str], depth: int = 0) -> dict:
        """``x`` as JSON-able data; objects among the call's arguments become references."""
        if depth > _MAX_DEPTH:
            return {"unsupported": "a structure nested too deeply"}
        if id(x) in refs:
            return {"ref": refs[id(x)]}
        if x is None or isinstance(x, (bool, int, str)):
            return {"v": x if not isinstance(x, str) else x[:10_000]}
        if isinstance(x, float):
            return {"f": repr(x)}
        if isinstance(x, torch.Tensor):
            return self.tensor(x)
        if isinstance(x, np.ndarray) and x.dtype != object:
            return self.tensor(torch.from_numpy(np.array(x)))
        if isinstance(x, (tuple, list)):
            kind = "tuple" if isinstance(x, tuple) else "list"
            return {kind: [self.value(v, refs, depth + 1) for v in list(x)[:10_000]]}
        if isinstance(x, dict) and all(isinstance(k, str) for k in x):
            return {"dict": {k: self.value(v, refs, depth + 1) for k, v in x.items()}}
        if isinstance(x, nn.Module):
            return self.module(x, refs, depth)
        return {"unsupported": f"a {type(x).__name__}"}

    def module(self, m: nn.Module, refs: Mapping[int, str], depth: int) -> dict:
        cls = type(m).__name__
        if _LAYERS.get(cls) is not type(m):
            return {"unsupported": f"a {cls} module", "module": True}
        config = {}
        for name in inspect.signature(type(m).__init__).parameters:
            if name in ("self", "device", "dtype", "args", "kwargs") or not hasattr(m, name):
                continue
            v = getattr(m, name)
            if name == "bias" and (v is None or isinstance(v, torch.Tensor)):
                config[name] = v is not None
            elif isinstance(v, (bool, int, float, str, type(None))) or (
                isinstance(v, tuple) and all(isinstance(i, (int, float)) for i in v)
            ):
                config[name] = list(v) if isinstance(v, tuple) else v
        tensors = {}
        pruned = {n.removesuffix("_orig") for n in m._parameters if n.endswith("_orig")}
        for name, p in m._parameters.items():
            if p is not None and name.removesuffix("_orig") not in pruned:
                tensors[name] = self.tensor(p)
        for name in pruned:  # torch.nn.utils.prune: record the effective (masked) weight
            tensors[name] = self.tensor(nn.Parameter(getattr(m, name).detach()))
        buffers = {
            n: self.tensor(b)
            for n, b in m._buffers.items()
            if b is not None and n.removesuffix("_mask") not in pruned
        }
        children = {
            n: self.value(c, refs, depth + 1) for n, c in m._modules.items() if c is not None
        }
        return {
            "module": cls,
            "config": config,
            "params": tensors,
            "buffers": buffers,
            "children": children,
            "training": m.training,
        }


def _leaves(args: tuple, kwargs: dict) -> dict[str, object]:
    """Every argument, and the tensors and modules inside them, by a path like ``a0.fc1``."""
    found: dict[str, object] = {}

    def walk(x, path: str, depth: int = 0):
        if depth > 4 or any(x is v for v in found.values()):
            return
        found[path] = x
        if isinstance(x, nn.Module):
            for name, p in x.named_parameters(recurse=True):
                found.setdefault(f"{path}.{name}", p)
        elif isinstance(x, (tuple, list)):
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]", depth + 1)

    for i, a in enumerate(args):
        walk(a, f"a{i}")
    for k, a in kwargs.items():
        walk(a, f"k_{k}")
    return found


def _state(enc: _Encoder, leaves: dict[str, object], before_ptrs: dict[int, tuple]) -> dict:
    """What a call left in its arguments: tensor values; for modules their parameters (with
    sharing and gradients), buffers (batch-norm statistics, pruning masks) and train/eval
    modes. Training loops are checked on all of these."""
    state = {}
    for path, x in leaves.items():
        if isinstance(x, nn.Module):
            params = {}
            for name, p in x.named_parameters():
                item = enc.tensor(p)
                other = before_ptrs.get(p.data_ptr(), (None,))[0]
                # torch.nn.utils.prune renames `weight` to `weight_orig`: the same tensor
                renamed = f"{path}.{name.removesuffix('_orig')}"
                if other is not None and other not in (f"{path}.{name}", renamed) and p.numel():
                    item["alias"] = other
                if p.grad is not None and not p.grad.is_sparse:
                    item["grad"] = enc.tensor(p.grad)
                params[name] = item
            buffers = {n: enc.tensor(b) for n, b in x.named_buffers() if b is not None}
            modes = {n: bool(m.training) for n, m in x.named_modules()}
            state[path] = {"params": params, "buffers": buffers, "training": modes}
        elif isinstance(x, torch.Tensor) and "." not in path:
            state[path] = {"tensor": enc.tensor(x)}
    return state


class _Recorder:
    """Stands in for the learner's function inside the sandbox and notes every call."""

    def __init__(self, fn: Callable, enc: _Encoder):
        self.fn, self.enc, self.calls = fn, enc, []

    def __call__(self, *args, **kwargs):
        leaves = _leaves(args, kwargs)
        # address -> (path, storage): holding the storage keeps the address valid while the
        # call runs; memory it frees (prune.remove replaces a weight's storage) could otherwise
        # be reused there, and a new tensor at that address would look like an alias
        ptrs = {}
        for path, x in leaves.items():
            if isinstance(x, torch.Tensor) and x.numel():
                ptrs.setdefault(x.data_ptr(), (path, x.untyped_storage()))
        refs = {id(x): path for path, x in leaves.items()}
        call: dict = {}
        self.calls.append(call)
        try:
            out = self.fn(*args, **kwargs)
        except (Exception, SystemExit) as e:
            call["raised"] = {"type": type(e).__name__, "message": str(e)[:2000]}
            call["state"] = _state(self.enc, leaves, ptrs)
            raise
        call["out"] = self.enc.value(out, refs)
        call["state"] = _state(self.enc, leaves, ptrs)
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            call["grads"] = self._grads(out, leaves)
        return out

    def _grads(self, out: torch.Tensor, leaves: dict[str, object]) -> dict:
        wrt = {
            p: x
            for p, x in leaves.items()
            if isinstance(x, torch.Tensor) and x.requires_grad and x.is_leaf
        }
        if not wrt:
            return {}
        try:
            grads = torch.autograd.grad(
                out.sum(), list(wrt.values()), retain_graph=True, allow_unused=True
            )
        except Exception:  # a graph that cannot be differentiated: replayed as none
            return {"failed": True}
        pairs = zip(wrt, grads, strict=True)
        return {p: None if g is None else self.enc.tensor(g) for p, g in pairs}


def record_exercise(exercise_id: str, namespace: Mapping[str, object], out_dir) -> None:
    """Run exercise ``exercise_id``'s checker on the learner's definition in ``namespace``,
    recording what the learner's code returned to ``out_dir/<exercise_id>.json`` and
    ``.npz``. The checker's own verdict is not kept: the grader replays the record."""
    from .checks import EXERCISES

    ex = EXERCISES[exercise_id]
    out_dir = Path(out_dir)
    enc = _Encoder()
    record: dict = {"exercise": exercise_id}
    if ex.name not in namespace:
        record["missing"] = True
    else:
        obj = namespace[ex.name]
        if ex.kind != "function" or not callable(obj):
            record["object"] = enc.value(obj, {})
        else:
            recorder = _Recorder(obj, enc)
            try:
                ex.check(recorder, quiet=True)
            except Exception as e:  # the checker itself failed: the replay will say so
                record["checker_error"] = repr(e)[:500]
            record["calls"] = recorder.calls
    with atomic_path(out_dir / f"{exercise_id}.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **enc.arrays)
    with atomic_path(out_dir / f"{exercise_id}.json") as tmp:
        tmp.write_text(json.dumps(record), encoding="utf-8")


# ============================================================================================
# In the grader: decode and replay
# ============================================================================================
class _Decoder:
    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self.arrays = arrays

    def tensor(self, d: dict) -> torch.Tensor:
        key = d.get("t")
        if not isinstance(key, str) or key not in self.arrays:
            raise RecordError(f"a tensor missing from the record: {key!r}")
        a = self.arrays[key]
        if a.dtype == object:
            raise RecordError("an object array in the record")
        t = torch.from_numpy(np.array(a))
        dtype = getattr(torch, str(d.get("dtype", "")), None)
        if isinstance(dtype, torch.dtype) and dtype != t.dtype:
            t = t.to(dtype)
        if d.get("param"):
            return nn.Parameter(t, requires_grad=bool(d.get("requires_grad")))
        return t.requires_grad_(bool(d.get("requires_grad")) and t.is_floating_point())

    def value(self, d, refs: Mapping[str, object], depth: int = 0):
        if depth > _MAX_DEPTH or not isinstance(d, dict):
            raise RecordError("a malformed value in the record")
        if "ref" in d:
            if d["ref"] not in refs:
                raise RecordError(f"a reference to an unknown argument {d['ref']!r}")
            return refs[d["ref"]]
        if "v" in d:
            v = d["v"]
            if v is not None and not isinstance(v, (bool, int, str)):
                raise RecordError("a malformed value in the record")
            return v
        if "f" in d:
            return float(str(d["f"]))
        if "t" in d:
            return self.tensor(d)
        if "tuple" in d:
            return tuple(self.value(v, refs, depth + 1) for v in d["tuple"])
        if "list" in d:
            return [self.value(v, refs, depth + 1) for v in d["list"]]
        if "dict" in d:
            return {str(k): self.value(v, refs, depth + 1) for k, v in d["dict"].items()}
        if "unsupported" in d:
            what = str(d["unsupported"])[:80]
            return _NotRebuilt(what) if d.get("module") else _Opaque(what)
        if "module" in d:
            return self.module(d, refs, depth)
        raise RecordError("a malformed value in the record")

    def module(self, d: dict, refs, depth: int) -> nn.Module:
        cls = _LAYERS.get(str(d["module"]))
        if cls is None:
            return _NotRebuilt(f"a {d['module']} module")
        config = dict(d.get("config") or {})
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        if cls in (nn.Sequential, nn.ModuleList, nn.ModuleDict):
            m = cls()
        else:
            allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
            try:
                m = cls(**{k: v for k, v in config.items() if k in allowed})
            except Exception as e:
                return _NotRebuilt(f"a {cls.__name__} with settings {config} ({e})")
        for name, child in (d.get("children") or {}).items():
            m.add_module(str(name), self.value(child, refs, depth + 1))
        for name, t in (d.get("params") or {}).items():
            p = self.tensor(t)
            p = p if isinstance(p, nn.Parameter) else nn.Parameter(p)
            m._parameters[str(name)] = p
        for name, t in (d.get("buffers") or {}).items():
            m._buffers[str(name)] = self.tensor(t).detach()
        m.train(bool(d.get("training", True)))
        return m


class _Opaque:
    """A value the record could not hold (only its type's name came back)."""

    def __init__(self, what: str):
        self.what = what

    def __repr__(self) -> str:
        return f"<{self.what}, not rebuilt by the grader>"


class _NotRebuilt(nn.Module):
    """A module the grader does not rebuild: only torch.nn's own layers are."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def forward(self, *args, **kwargs):
        raise RuntimeError(
            f"the grader rebuilds only torch.nn's own layers (nn.Linear, nn.Conv2d, "
            f"nn.Sequential, ...), and this was {self.what}; build it from those layers"
        )


class _NoRecord(Exception):
    """The sandbox recorded fewer calls than the checker made."""


def _exception(d: Mapping) -> Exception:
    name = str(d.get("type", "Exception"))
    message = str(d.get("message", ""))[:2000]
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:
            pass
    name = name if name.isidentifier() else "Exception"
    return type(name, (Exception,), {})(message)


def _apply_state(dec: _Decoder, state: Mapping, leaves: Mapping[str, object]) -> None:
    """Make the grader's arguments what the learner's call left them."""
    with torch.no_grad():
        for path, s in state.items():
            x = leaves.get(path)
            if isinstance(x, torch.Tensor) and "tensor" in s:
                value = dec.tensor(s["tensor"])
                if value.shape == x.shape and not torch.equal(value.to(x.dtype), x):
                    x.copy_(value)
            elif isinstance(x, nn.Module) and "params" in s:
                _apply_masks(dec, x, s.get("buffers") or {}, s["params"])
                for name, item in s["params"].items():
                    owner, leaf = _owner(x, name)
                    if owner is None or leaf not in owner._parameters:
                        continue
                    alias = leaves.get(item.get("alias", ""))
                    if isinstance(alias, torch.Tensor):  # shares memory with another argument
                        value = dec.tensor(item)
                        shared = alias.detach().as_strided(value.shape, value.stride())
                        owner._parameters[leaf] = nn.Parameter(shared, value.requires_grad)
                        continue
                    value = dec.tensor(item)
                    old = owner._parameters[leaf]
                    if old is not None and old.shape == value.shape:
                        old.copy_(value)
                        old.requires_grad_(value.requires_grad)
                    else:
                        owner._parameters[leaf] = nn.Parameter(value.detach(), value.requires_grad)
                    p = owner._parameters[leaf]
                    grad = item.get("grad")
                    p.grad = None
                    if isinstance(grad, dict):
                        g = dec.tensor(grad).detach()
                        if g.shape == p.shape and g.dtype == p.dtype:
                            p.grad = g
                for name, item in (s.get("buffers") or {}).items():
                    owner, leaf = _owner(x, name)
                    if owner is None or owner._buffers.get(leaf) is None:
                        continue
                    value, old = dec.tensor(item).detach(), owner._buffers[leaf]
                    if value.shape == old.shape:
                        owner._buffers[leaf] = value.to(old.dtype)
                for name, mode in (s.get("training") or {}).items():
                    owner, _ = _owner(x, f"{name}.x" if name else "x")
                    if owner is not None and isinstance(mode, bool):
                        owner.training = mode


def _owner(root: nn.Module, dotted: str) -> tuple[nn.Module | None, str]:
    """The submodule of ``root`` holding ``a.b.leaf``, and ``leaf`` (None: no such module)."""
    owner_name, _, leaf = str(dotted).rpartition(".")
    try:
        return root.get_submodule(owner_name), leaf
    except AttributeError:
        return None, leaf


def _apply_masks(dec: _Decoder, root: nn.Module, buffers: Mapping, params: Mapping) -> None:
    """Pruning the learner's call left (``torch.nn.utils.prune``: ``weight_orig`` and
    ``weight_mask``): put the same masks on the grader's module, with torch's own pruning."""
    from torch.nn.utils import prune

    for name, item in buffers.items():
        if not str(name).endswith("_mask"):
            continue
        owner, leaf = _owner(root, name)
        target = leaf.removesuffix("_mask")
        if owner is None or f"{str(name).removesuffix('_mask')}_orig" not in params:
            continue
        if target not in owner._parameters or f"{target}_mask" in owner._buffers:
            continue  # already pruned here, or nothing to prune
        mask = dec.tensor(item).detach()
        if mask.shape == owner._parameters[target].shape:
            prune.custom_from_mask(owner, target, mask)


def _with_grads(value: torch.Tensor, grads: Mapping, leaves: Mapping[str, object]):
    """``value`` as a tensor whose ``.sum()`` has the recorded gradients for the arguments."""
    value = value.detach()
    if not value.is_floating_point():
        return value
    zero = torch.zeros((), dtype=value.dtype)
    for path, g in grads.items():
        x = leaves.get(path)
        if g is None or not isinstance(x, torch.Tensor) or not x.requires_grad:
            continue
        g = torch.as_tensor(g, dtype=x.dtype)
        if g.shape != x.shape or not bool(torch.isfinite(g).all()):
            continue
        s = (x * g).sum()
        zero = zero + (s - s.detach())  # exactly 0, with gradient g for x
    if not zero.requires_grad:  # a graph that reaches none of the arguments
        dummy = torch.zeros((), dtype=value.dtype, requires_grad=True)
        zero = dummy - dummy.detach()
    return value + zero / max(1, value.numel())


class _Replayer:
    def __init__(self, calls: list, dec: _Decoder):
        self.calls, self.dec, self.i = calls, dec, 0

    def __call__(self, *args, **kwargs):
        if self.i >= len(self.calls):
            raise _NoRecord("the submission returned nothing for this call (it stopped early)")
        call = self.calls[self.i]
        self.i += 1
        if not isinstance(call, dict):
            raise RecordError("a malformed call in the record")
        leaves = _leaves(args, kwargs)
        _apply_state(self.dec, call.get("state") or {}, leaves)
        if "raised" in call:
            raise _exception(call["raised"])
        if "out" not in call:
            raise _NoRecord("the call did not finish in the submission")
        out = self.dec.value(call["out"], leaves)
        grads = call.get("grads")
        if isinstance(out, torch.Tensor) and grads is not None and "ref" not in call["out"]:
            if not isinstance(grads, dict) or grads.get("failed"):
                grads = {}
            grads = {p: None if g is None else self.dec.tensor(g) for p, g in grads.items()}
            out = _with_grads(out, grads, leaves)
        return out


def _read(out_dir: Path, exercise_id: str) -> tuple[dict, dict[str, np.ndarray]] | None:
    js, npz = out_dir / f"{exercise_id}.json", out_dir / f"{exercise_id}.npz"
    if not js.is_file() or js.is_symlink():
        return None
    if js.stat().st_size > _MAX_JSON:
        raise RecordError(f"record larger than {_MAX_JSON // 2**20} MB")
    record = json.loads(js.read_text(encoding="utf-8"))
    if not isinstance(record, dict):
        raise RecordError("a record that is not a JSON object")
    arrays: dict[str, np.ndarray] = {}
    if npz.is_file() and not npz.is_symlink():
        if npz.stat().st_size > _MAX_NPZ:
            raise RecordError(f"tensors larger than {_MAX_NPZ // 2**20} MB")
        with zipfile.ZipFile(npz) as z:  # refuse zip bombs before numpy unpacks anything
            if sum(i.file_size for i in z.infolist()) > 4 * _MAX_NPZ:
                raise RecordError("tensors that unpack to too much data")
        with np.load(npz, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    return record, arrays


def replay_exercise(exercise_id: str, out_dir) -> dict | None:
    """The verdict on exercise ``exercise_id`` from the record in ``out_dir``, computed here.

    Returns:
        ``CheckResult.to_dict()`` of the checker run on the recorded outputs, or None when
        the sandbox left no record.

    Raises:
        RecordError: a record that cannot be read back as data.
    """
    from .checks import EXERCISES, CheckResult, check_exercise

    try:
        found = _read(Path(out_dir), exercise_id)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise RecordError(f"{type(e).__name__}: {str(e)[:200]}") from e
    if found is None:
        return None
    record, arrays = found
    if record.get("exercise") != exercise_id:
        raise RecordError("a record for another exercise")
    ex = EXERCISES[exercise_id]
    dec = _Decoder(arrays)
    if record.get("missing"):
        return check_exercise(exercise_id, {}, quiet=True).to_dict()
    if "object" in record:
        obj = dec.value(record["object"], {})
    elif isinstance(record.get("calls"), list):
        obj = _Replayer(record["calls"], dec)
    else:
        raise RecordError("a record with neither calls nor an object")
    result: CheckResult = check_exercise(exercise_id, {ex.name: obj}, quiet=True)
    return result.to_dict()
