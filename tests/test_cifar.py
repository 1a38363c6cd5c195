"""CIFAR-10 on demand: a tiny tarball in the published layout, served on 127.0.0.1.

The tarball is built here with the real file's structure (``cifar-10-batches-py/data_batch_1``
… ``_5`` and ``test_batch``, each a protocol-2 pickle of ``{b"data", b"labels"}`` whose array
global is spelt ``numpy.core.multiarray`` as in the published files), so the reader, the
checksum, the cache and the offline error are all exercised without the 163 MB download.
"""

import hashlib
import http.server
import io
import pickle
import tarfile
import threading

import numpy as np
import pytest
import torch

import kdlib
from kdlib import data as kdata

N_TRAIN, N_TEST = 2, 3  # images per training batch (five of them) and in the test batch


def _pickle(obj) -> bytes:
    raw = pickle.dumps(obj, protocol=2)
    return raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # as published


def _tarball(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _batches(rng) -> dict[str, tuple[np.ndarray, list[int]]]:
    out = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        n = N_TEST if name == "test_batch" else N_TRAIN
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[0, 0] = 255  # the brightest value is present, so pixels scale by 1/255
        out[name] = (data, [(i + j) % 10 for j in range(n)])
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = self.files.get(self.path.rsplit("/", 1)[-1])
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def serve(monkeypatch):
    """``serve(tarball_bytes) -> base URL``; the tarball's checksum becomes the expected one."""
    servers = []

    def start(body: bytes) -> str:
        urls, _, classes = kdata._REMOTE["cifar10"]
        sha = hashlib.sha256(body).hexdigest()
        monkeypatch.setitem(
            kdata._REMOTE, "cifar10", (urls, {"cifar-10-python.tar.gz": sha}, classes)
        )
        handler = type("H", (_Handler,), {"files": {"cifar-10-python.tar.gz": body}})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def test_cifar10_downloads_parses_and_caches(serve, tmp_path):
    batches = _batches(np.random.default_rng(0))
    body = _tarball({k: _pickle({b"data": d, b"labels": y}) for k, (d, y) in batches.items()})
    url = serve(body)
    d = kdlib.load("cifar10", cache=tmp_path, base_urls=[url])
    assert d.X_train.shape == (5 * N_TRAIN, 3, 32, 32) and d.X_test.shape == (N_TEST, 3, 32, 32)
    assert d.input_shape == (3, 32, 32) and d.num_classes == 10 and d.classes[0] == "airplane"
    train = np.concatenate([batches[f"data_batch_{k}"][0] for k in range(1, 6)])
    labels = sum((batches[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    assert d.y_train.tolist() == labels and d.y_test.tolist() == batches["test_batch"][1]
    # Row layout: 1024 red, 1024 green, 1024 blue values, each image row-major.
    expected = train.reshape(-1, 3, 32, 32).astype(np.float32)
    np.testing.assert_allclose(d.unnormalize(d.X_train).numpy() * 255, expected, atol=1e-3)
    assert d.X_train.mean().abs() < 1e-5  # normalised with the train statistics
    files = sorted(p.name for p in (tmp_path / "cifar10").iterdir())
    assert files == ["cifar-10-python.tar.gz"]  # verified, renamed into place, no .part left
    again = kdlib.load("cifar10", cache=tmp_path, base_urls=[_closed_url()])  # from the cache
    assert torch.equal(again.X_train, d.X_train)


def test_cifar10_corrupted_download_is_deleted(serve, tmp_path, monkeypatch):
    body = _tarball({"test_batch": _pickle({b"data": np.zeros((1, 3072), np.uint8)})})
    url = serve(body)
    urls, files, classes = kdata._REMOTE["cifar10"]
    wrong = {name: "0" * 64 for name in files}
    monkeypatch.setitem(kdata._REMOTE, "cifar10", (urls, wrong, classes))
    with pytest.raises(kdlib.DownloadError, match="cifar-10-python.tar.gz.*SHA-256 mismatch"):
        kdlib.load("cifar10", cache=tmp_path, base_urls=[url])
    assert not any((tmp_path / "cifar10").iterdir())


def _closed_url() -> str:
    closed = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = closed.server_address[1]
    closed.server_close()  # nothing listens there any more: as when offline
    return f"http://127.0.0.1:{port}/"


def test_cifar10_offline_error_is_clear(tmp_path):
    with pytest.raises(
        kdlib.DownloadError,
        match=r"(?s)could not download cifar10 file cifar-10-python.tar.gz.*Offline\?.*SHA-256",
    ):
        kdlib.load("cifar10", cache=tmp_path, base_urls=[_closed_url()])
    assert not any((tmp_path / "cifar10").iterdir())


def test_cifar10_missing_batch_is_named(serve, tmp_path):
    batches = _batches(np.random.default_rng(1))
    del batches["test_batch"]
    body = _tarball({k: _pickle({b"data": d, b"labels": y}) for k, (d, y) in batches.items()})
    with pytest.raises(kdlib.DownloadError, match="has no cifar-10-batches-py/test_batch"):
        kdlib.load("cifar10", cache=tmp_path, base_urls=[serve(body)])


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def test_cifar10_pickles_cannot_run_code(serve, tmp_path, capsys):
    """Even a file that passed its checksum may only hold arrays and plain data."""
    body = _tarball({f"data_batch_{k}": pickle.dumps(_RunsCode(), protocol=2) for k in (1, 2)})
    with pytest.raises(
        kdlib.DownloadError, match=r"refusing to unpickle (__builtin__|builtins)\.print"
    ):
        kdlib.load("cifar10", cache=tmp_path, base_urls=[serve(body)])
    assert "this pickle ran code" not in capsys.readouterr().out


def test_cifar10_is_known():
    assert "cifar10" in kdlib.known_datasets()


def test_cifar_presets_are_a_teacher_and_a_much_smaller_student():
    teacher, student = kdlib.model("cifar-teacher", seed=0), kdlib.model("cifar-student", seed=0)
    x = torch.zeros(2, 3, 32, 32)  # the presets default to CIFAR's input shape
    assert teacher(x).shape == (2, 10) and student(x).shape == (2, 10)
    assert kdlib.count_params(student) * 20 < kdlib.count_params(teacher)
    assert kdlib.macs(student, (3, 32, 32)) * 10 < kdlib.macs(teacher, (3, 32, 32))
    # named stages, so feature distillation can tap them like the MNIST CNNs
    names = dict(teacher.named_children())
    assert {"stage1", "stage2", "stage3", "head"} <= names.keys()
    for name in ("cifar-teacher", "cifar-student"):
        assert name in kdlib.course.RECIPES
