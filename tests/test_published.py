"""`cnnbench weights download` and ``--pretrained``: the registry, downloading through a loopback
HTTP server on 127.0.0.1 (a good file, a wrong checksum, a cut-off download that resumes, an
unreachable host), the converted run directory in the cache, and the commands that use it. No test
reaches outside this machine."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from cnnbench.cli import cli
from cnnbench.progress import Record
from cnnbench.errors import CnnbenchError, UsageError
from cnnbench.transfer import published
from cnnbench.transfer.published import PUBLISHED, Published


class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    cut: set[str]        # paths whose next answer stops half-way (then they are served whole)
    ranges: bool = True  # honour Range requests
    requests: list[tuple[str, str | None]]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self):  # noqa: N802
        self.server.requests.append((self.path, self.headers.get("Range")))
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range") and self.server.ranges:
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        rest = body[start:]
        if self.path in self.server.cut:
            self.server.cut.discard(self.path)
            rest = rest[:len(rest) // 2]
            self.close_connection = True
        self.wfile.write(rest)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.cut, httpd.requests = {}, set(), []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(published.MIRROR_ENV, raising=False)
    return tmp_path / "cache"


@pytest.fixture
def entry(server, monkeypatch):
    """A registry entry for a file the test server holds (bytes set by the test)."""
    made = []

    def make(name: str, body: bytes, *, arch="resnet18", digest: str | None = None, filename=None) -> Published:
        filename = filename or f"{name}-{hashlib.sha256(body).hexdigest()[:8]}.pth"
        server.files[f"/models/{filename}"] = body
        digest = digest or f"sha256:{hashlib.sha256(body).hexdigest()[:8]}"
        url = f"http://127.0.0.1:{server.server_port}/models/{filename}"
        made.append(name)
        return published.register(Published(name, "torchvision", arch, url, digest, "test licence", 69.8, 89.1, 0.1))

    yield make
    for name in made:
        PUBLISHED.pop(name, None)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- the registry

def test_registry_covers_every_importable_architecture():
    from cnnbench.transfer.naming import KERAS, TORCHVISION

    torchvision = {e.arch for e in PUBLISHED.values() if e.source == "torchvision"}
    keras = {e.arch for e in PUBLISHED.values() if e.source == "keras"}
    assert torchvision == set(TORCHVISION) and keras == set(KERAS)
    for e in PUBLISHED.values():
        algorithm, _, value = e.digest.partition(":")
        if e.source == "torchvision":  # torch.hub's convention: the name carries the SHA-256 prefix
            assert e.url.startswith("https://download.pytorch.org/models/") and algorithm == "sha256"
            assert e.filename.rsplit("-", 1)[1] == f"{value}.pth"
        else:
            assert e.url.startswith("https://storage.googleapis.com/tensorflow/keras-applications/")
            assert algorithm == "md5" and len(value) == 32
        assert e.licence and e.top1 and e.top5 and e.size_mb > 10
    assert PUBLISHED["resnet50"].top1 == 76.130 and PUBLISHED["alexnet-owt"].top5 == 79.066
    assert PUBLISHED["resnet50-v2"].eval_resize == 232 and PUBLISHED["resnet50"].eval_resize == 256
    with pytest.raises(ValueError, match="no torchvision reader for lenet5"):
        published.register(Published("x", "torchvision", "lenet5", "http://h/x.pth", "sha256:00000000", "", None, None, 1))
    with pytest.raises(UsageError, match="no published weights named 'resnet5'; did you mean resnet50"):
        published.get("resnet5")


def test_list_is_a_table_and_json(cache):
    result = CliRunner().invoke(cli, ["weights", "download", "--list", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["vgg16-keras"]["url"].endswith("vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    assert rows["vgg16-keras"]["licence"].startswith("CC BY 4.0") and rows["resnet18"]["file"] == "resnet18-f37072fd.pth"
    table = CliRunner(env={"COLUMNS": "140"}).invoke(cli, ["weights", "download", "--list"])
    assert table.exit_code == 0 and "googlenet-bn" in table.output and "sha256 f37072fd" in table.output
    none = CliRunner().invoke(cli, ["weights", "download"])
    assert none.exit_code == 2 and "name the weights" in none.output


# --------------------------------------------------------------------------- downloading


def test_good_download_converts_once_and_commands_use_it(server, cache, entry, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from test_weights import torch_model

    from cnnbench.runs.loaded import load_run

    model = torch_model("resnet18", 1000)
    torch.save(model.state_dict(), tmp_path / "r18.pth")
    body = (tmp_path / "r18.pth").read_bytes()
    e = entry("r18-loopback", body)

    result = CliRunner().invoke(cli, ["weights", "download", "r18-loopback", "--format", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    run_dir = cache / "weights" / "runs" / "r18-loopback"
    assert summary["created"] and summary["run_dir"] == str(run_dir)
    assert summary["sha256"] == hashlib.sha256(body).hexdigest() and summary["params"] == 11_689_512
    assert (cache / "weights" / "downloads" / e.filename).read_bytes() == body
    assert not list((cache / "weights" / "downloads").glob("*.part"))
    assert json.loads((run_dir / "config.json").read_text())["run_dir"] == str(run_dir)
    assert json.loads((run_dir / "published.json").read_text())["url"] == e.url

    run = load_run(run_dir)  # (test_weights.py checks the converted logits against PyTorch's)
    assert run.cfg.arch == "resnet18" and run.class_names[0] == "tench"

    # a second time: nothing fetched, nothing converted
    requests = len(server.requests)
    again = CliRunner().invoke(cli, ["weights", "download", "r18-loopback", "--format", "json"])
    assert again.exit_code == 0 and not json.loads(again.stdout)["created"] and len(server.requests) == requests

    # predict --pretrained reads the cached run
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (240, 250, 3), dtype=np.uint8)).save(image)
    result = CliRunner().invoke(cli, ["predict", str(image), "--pretrained", "r18-loopback", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["predictions"][0]["id"].startswith("n")
    both = CliRunner().invoke(cli, ["predict", str(image), "--pretrained", "r18-loopback", "--run", str(run_dir)])
    assert both.exit_code == 2 and "not both" in both.output

    # train --pretrained: the architecture and init_from come from the weights
    from cnnbench.commands import training

    seen = {}

    def capture(cfg, target, fmt):
        seen["cfg"] = cfg
        raise CnnbenchError("stopped before training")

    monkeypatch.setattr(training, "_train_with_progress", capture)
    result = CliRunner().invoke(cli, ["train", "--pretrained", "r18-loopback", "--dataset", "digits"])
    assert "stopped before training" in result.output, result.output
    assert seen["cfg"].arch == "resnet18" and seen["cfg"].init_from == str(run_dir)
    result = CliRunner().invoke(cli, ["train", "resnet34", "--pretrained", "r18-loopback"])
    assert result.exit_code == 2 and "holds a resnet18, not a resnet34" in result.output
    result = CliRunner().invoke(cli, ["finetune", "--dataset", "digits"])
    assert result.exit_code == 2 and "give SOURCE (a run directory) or --pretrained NAME" in result.output

    # what train/finetune then load: every tensor but the new 10-class head
    from cnnbench.archs import create_model
    from cnnbench.train.start import load_pretrained

    fresh = load_pretrained(create_model("resnet18", num_classes=10, input_size=64), "resnet18", run_dir)["fresh"]
    assert sorted(fresh) == ["params.head.fc.bias", "params.head.fc.kernel"]


def test_wrong_checksum_is_one_line_and_deletes_the_file(server, cache, entry):
    e = entry("bad-loopback", b"not the published file" * 100, digest="sha256:0123abcd")
    result = CliRunner().invoke(cli, ["weights", "download", "bad-loopback"])
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0
    assert f"{e.filename} has sha256 " in result.output and "not the published 0123abcd" in result.output
    assert "deleted" in result.output
    assert not list((cache / "weights" / "downloads").iterdir())
    assert not (cache / "weights" / "runs" / "bad-loopback").exists()


def test_cut_off_download_resumes_where_it_stopped(server, cache, entry):
    body = bytes(range(256)) * 4096  # 1 MiB
    e = entry("cut-loopback", body)
    path = f"/models/{e.filename}"
    server.cut.add(path)
    with pytest.raises(CnnbenchError, match=rf"download of {e.filename} .* stopped at 524,288 of 1,048,576 "
                                            r"bytes; run the command again to resume"):
        published.download(e)
    part = cache / "weights" / "downloads" / f"{e.filename}.part"
    assert part.stat().st_size == len(body) // 2

    seen = Record()
    file = published.download(e, progress=seen)
    assert file.read_bytes() == body and not part.exists()
    assert server.requests[-1] == (path, f"bytes={len(body) // 2}-")  # only the rest was asked for
    stages = [event[1] for event in seen.events if event[0] == "start"]
    assert stages == [f"downloading {e.filename}", f"checking {e.filename}"]
    assert seen.done(f"downloading {e.filename}") == len(body)  # counted from the resumed byte on
    assert ("update", len(body), len(body), None) in seen.events and seen.done() == len(body)

    # a server that ignores ranges sends the whole file again: it replaces the part
    server.ranges, server.cut = False, {path}
    file.unlink()
    with pytest.raises(CnnbenchError, match="stopped at"):
        published.download(e)
    assert published.download(e).read_bytes() == body


def test_unreachable_host_and_missing_file_are_one_line(server, cache, entry, monkeypatch):
    e = entry("gone-loopback", b"x" * 1000)
    server.files.clear()
    result = CliRunner().invoke(cli, ["weights", "download", "gone-loopback"])
    assert result.exit_code == 1 and "answered HTTP 404" in result.output

    port = _closed_port()
    result = CliRunner().invoke(cli, ["weights", "download", "gone-loopback", "--mirror", f"http://127.0.0.1:{port}/w"])
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0
    assert f"cannot reach 127.0.0.1:{port} (" in result.output and "CNNBENCH_WEIGHTS_MIRROR" in result.output

    # the mirror takes the registry's file name from another server
    server.files[f"/mirror/{e.filename}"] = b"x" * 1000
    monkeypatch.setenv(published.MIRROR_ENV, f"http://127.0.0.1:{server.server_port}/mirror/")
    assert published.mirror_url(e) == f"http://127.0.0.1:{server.server_port}/mirror/{e.filename}"
    assert published.download(e).read_bytes() == b"x" * 1000
