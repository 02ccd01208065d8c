"""`model.pretrained: imagenet`: the libraries' own weights from their own caches (written here, random init, in
temporary TORCH_HOME / HF_HOME folders), and the one-line offline error within 2 s, never the network."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torchvision
from huggingface_hub.file_download import repo_folder_name
from torchvision.models import get_model_weights

from visionbench.engine.transfer import load_pretrained
from visionbench.errors import UserError
from visionbench.models import create_model
from visionbench.models.hub import CONNECT_SECONDS, imagenet_weights, offline_reason

OFFLINE_SECONDS = 2.0  # the requirement: offline is an error within 2 s
_NETWORK_VARS = ("HF_HUB_OFFLINE", "VISIONBENCH_OFFLINE", "HF_ENDPOINT", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")
_PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
_REAL_GETADDRINFO = socket.getaddrinfo
_REAL_CREATE_CONNECTION = socket.create_connection


@pytest.fixture
def caches(tmp_path, monkeypatch) -> dict:
    """Temporary torch and Hugging Face caches, no offline switch, no proxy; any connection attempt is recorded
    and refused (a test that reads a cached file must not make one)."""
    for var in _NETWORK_VARS + _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network refused by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return {"torch": tmp_path / "torch" / "hub" / "checkpoints", "hf": tmp_path / "hf" / "hub", "attempts": attempts}


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _assert_bit_equal(loaded: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    assert loaded.keys() == saved.keys(), sorted(loaded.keys() ^ saved.keys())[:5]
    different = [k for k in saved if loaded[k].dtype != saved[k].dtype or not torch.equal(loaded[k], saved[k])]
    assert not different, f"tensors differ after load: {different[:5]}"


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_torchvision_weights_in_the_torch_hub_cache_load_bit_equal(name, caches, monkeypatch, tmp_path) -> None:
    saved = getattr(torchvision.models, name)().state_dict()
    data = _torch_bytes(saved)
    weights = get_model_weights(name).IMAGENET1K_V1
    # The real file's name carries the real file's hash prefix; this random one gets its own, at torchvision's URL.
    filename = f"{name}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    monkeypatch.setattr(weights.value, "url", weights.url.rsplit("/", 1)[0] + "/" + filename)
    caches["torch"].mkdir(parents=True)
    (caches["torch"] / filename).write_bytes(data)
    notebook = tmp_path / "notebook_weights.pth"  # the same state_dict as a notebook's torch.save writes it
    notebook.write_bytes(data)
    del data
    loaded, where = imagenet_weights(f"torchvision:{name}", "IMAGENET1K_V1")
    _assert_bit_equal(loaded, saved)
    assert "IMAGENET1K_V1" in where and str(caches["torch"] / filename) in where, where
    del loaded
    # Into our torchvision:<name> model, whole (its 1000-class head kept), through `imagenet` and through the path
    model = create_model(f"torchvision:{name}", 1000, img_size=(224, 224))
    for source in ("imagenet:IMAGENET1K_V1", str(notebook)):
        with torch.no_grad():
            for tensor in model.state_dict().values():
                tensor.zero_()
        transfer = load_pretrained(model, source, f"torchvision:{name}", keep_head=True)
        _assert_bit_equal(model.state_dict(), saved)
        assert not transfer.random and not transfer.mismatched, (source, transfer)
    assert not caches["attempts"], "a cached file is read without the network"


def test_torchvision_default_is_the_enum_default_and_a_tag_picks_a_member(caches, monkeypatch) -> None:
    monkeypatch.setenv("VISIONBENCH_OFFLINE", "1")
    v1, v2 = (get_model_weights("resnet50")[t].url.rsplit("/", 1)[1] for t in ("IMAGENET1K_V1", "IMAGENET1K_V2"))
    with pytest.raises(UserError, match=f"place it at {caches['torch'] / v2}"):
        imagenet_weights("torchvision:resnet50")  # DEFAULT is IMAGENET1K_V2
    with pytest.raises(UserError, match=f"place it at {caches['torch'] / v1}"):
        imagenet_weights("torchvision:resnet50", "imagenet1k_v1")
    with pytest.raises(UserError, match="has no weights 'V3'; expected one of IMAGENET1K_V1, IMAGENET1K_V2"):
        imagenet_weights("torchvision:resnet50", "V3")


def test_torchvision_file_whose_hash_prefix_does_not_match_its_name_is_refused(caches) -> None:
    filename = get_model_weights("resnet18").DEFAULT.url.rsplit("/", 1)[1]  # resnet18-f37072fd.pth
    caches["torch"].mkdir(parents=True)
    (caches["torch"] / filename).write_bytes(_torch_bytes(torchvision.models.resnet18().state_dict()))
    with pytest.raises(
        UserError, match=f"{caches['torch'] / filename}: its SHA-256 is not the one its name {filename}"
    ):
        imagenet_weights("torchvision:resnet18")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_torchvision_file_with_a_pickled_payload_is_refused_without_running_it(caches, monkeypatch, tmp_path) -> None:
    marker = tmp_path / "payload-ran"
    data = _torch_bytes({"conv1.weight": torch.zeros(1), "x": _Payload(marker)})
    weights = get_model_weights("resnet18").IMAGENET1K_V1
    filename = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    monkeypatch.setattr(weights.value, "url", weights.url.rsplit("/", 1)[0] + "/" + filename)
    caches["torch"].mkdir(parents=True)
    (caches["torch"] / filename).write_bytes(data)
    with pytest.raises(UserError, match="refused: not a torch.save file of torchvision's weights .* a call to"):
        imagenet_weights("torchvision:resnet18")
    assert not marker.exists(), "the payload ran"


def _place_in_hf_cache(hub: Path, repo: str, tensors: dict[str, torch.Tensor], data: bytes | None = None) -> Path:
    """huggingface_hub's cache layout: blobs/<sha256>, snapshots/<commit>/<file> linking to it, refs/main; the
    tensors as model.safetensors, or `data` as pytorch_model.bin."""
    folder = hub / repo_folder_name(repo_id=repo, repo_type="model")
    name, data = ("model.safetensors", safetensors.torch.save(tensors)) if data is None else ("pytorch_model.bin", data)
    blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = folder / "snapshots" / commit / name
    for path in (blob, snapshot, folder / "refs" / "main"):
        path.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    (folder / "refs" / "main").write_text(commit)
    return snapshot


@pytest.mark.parametrize(("model_name", "tag", "repo"), [
    ("resnet18", None, "timm/resnet18.a1_in1k"),  # a registered name: timm's default weights of its architecture
    ("timm:test_vit", "r160_in1k", "timm/test_vit.r160_in1k"),  # a ViT: through its checkpoint filter
])  # fmt: skip
def test_timm_weights_in_the_hugging_face_cache_load_bit_equal(model_name, tag, repo, caches) -> None:
    saved = timm.create_model(repo.removeprefix("timm/").split(".")[0]).state_dict()
    snapshot = _place_in_hf_cache(caches["hf"], repo, saved)
    loaded, where = imagenet_weights(model_name, tag)
    _assert_bit_equal(loaded, saved)
    assert f"timm's weights {repo.removeprefix('timm/')}" in where and str(snapshot) in where, where
    assert not caches["attempts"], "a cached file is read without the network"


class _Files(BaseHTTPRequestHandler):
    """A local stand-in for the weights hosts: GET and HEAD of `files` (path -> bytes), with the headers
    huggingface_hub reads (commit, ETag, size); anything else is the hub's 404 for a missing file."""

    files: dict[str, bytes] = {}

    def _headers(self) -> bytes | None:
        body = self.files.get(self.path.split("?")[0])
        self.send_response(404 if body is None else 200)
        if body is not None:
            self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
            self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        else:
            self.send_header("X-Error-Code", "EntryNotFound")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        return body

    def do_HEAD(self) -> None:  # noqa: N802  (http.server's naming)
        self._headers()

    def do_GET(self) -> None:  # noqa: N802
        body = self._headers()
        if body is not None:
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def web(caches, monkeypatch):
    """A local HTTP server for downloads (`web["url"]`, `web["files"]`); connections are allowed again."""
    monkeypatch.setattr(socket, "getaddrinfo", _REAL_GETADDRINFO)
    handler = type("Files", (_Files,), {"files": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"url": f"http://127.0.0.1:{server.server_address[1]}", "files": handler.files}
    server.shutdown()
    server.server_close()


def test_online_timm_weights_are_downloaded_into_the_hugging_face_cache(caches, web, monkeypatch) -> None:
    saved = timm.create_model("resnet18").state_dict()
    # only the older pytorch_model.bin: timm's order tries model.safetensors first, then falls back to it
    web["files"]["/timm/resnet18.a1_in1k/resolve/main/pytorch_model.bin"] = _torch_bytes(saved)
    monkeypatch.setenv("HF_ENDPOINT", web["url"])
    loaded, where = imagenet_weights("resnet18")
    _assert_bit_equal(loaded, saved)
    cached = caches["hf"] / "models--timm--resnet18.a1_in1k" / "snapshots"
    assert str(cached) in where and len(list(cached.glob("*/pytorch_model.bin"))) == 1, where
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _assert_bit_equal(imagenet_weights("resnet18")[0], saved)  # now from the cache


def test_online_torchvision_weights_are_downloaded_checked_and_kept(caches, web, monkeypatch) -> None:
    saved = torchvision.models.resnet18().state_dict()
    data = _torch_bytes(saved)
    weights = get_model_weights("resnet18").IMAGENET1K_V1
    good, bad = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth", "resnet18-0badf00d.pth"
    web["files"].update({f"/models/{good}": data, f"/models/{bad}": data})
    monkeypatch.setattr(weights.value, "url", f"{web['url']}/models/{bad}")
    with pytest.raises(UserError, match=f"downloading {web['url']}/models/{bad} to .* failed .*0badf00d"):
        imagenet_weights("torchvision:resnet18")
    assert not (caches["torch"] / bad).exists(), "a download that fails its hash check is not kept"
    monkeypatch.setattr(weights.value, "url", f"{web['url']}/models/{good}")
    loaded, where = imagenet_weights("torchvision:resnet18")
    _assert_bit_equal(loaded, saved)
    assert (caches["torch"] / good).read_bytes() == data and str(caches["torch"] / good) in where, where


def test_hugging_face_cache_file_that_is_not_its_blob_is_refused(caches) -> None:
    snapshot = _place_in_hf_cache(caches["hf"], "timm/resnet18.a1_in1k", timm.create_model("resnet18").state_dict())
    blob = snapshot.resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b" ")  # one byte changed: the blob's name is its SHA-256
    with pytest.raises(UserError, match=f"{snapshot}: its SHA-256 is not the one its name blobs/{blob.name} gives"):
        imagenet_weights("resnet18")


def test_hugging_face_cache_bin_with_a_pickled_payload_is_refused_without_running_it(caches, tmp_path) -> None:
    marker = tmp_path / "payload-ran"
    data = _torch_bytes({"conv1.weight": torch.zeros(1), "x": _Payload(marker)})
    snapshot = _place_in_hf_cache(caches["hf"], "timm/resnet18.a1_in1k", {}, data)
    with pytest.raises(UserError) as caught:
        imagenet_weights("resnet18")
    message = str(caught.value)
    assert f"{snapshot}: not timm's weights resnet18.a1_in1k (it holds pickled Python objects" in message, message
    assert "weights_only=False" not in message and not marker.exists(), "no advice to run it, and it did not run"


def _timed_error(model_name: str, tag: str | None = None) -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(UserError) as caught:
        imagenet_weights(model_name, tag)
    return str(caught.value), time.monotonic() - start


def test_offline_timm_error_names_the_file_and_the_cache_folder_in_one_line(caches, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message, seconds = _timed_error("timm:vit_base_patch16_224", "augreg_in21k_ft_in1k")
    assert seconds < OFFLINE_SECONDS, f"{seconds:.2f} s"
    assert "\n" not in message and "HF_HUB_OFFLINE is set" in message, message
    repo = "timm/vit_base_patch16_224.augreg_in21k_ft_in1k"
    assert f"hf download {repo} model.safetensors" in message, message
    assert f"copy the folder {repo_folder_name(repo_id=repo, repo_type='model')} " in message, message
    assert f"into {caches['hf']}," in message, message
    assert f"https://huggingface.co/{repo}/resolve/main/model.safetensors" in message, message
    assert not caches["attempts"], "offline set: no connection tried"


def test_offline_timm_weights_at_a_url_are_named_in_the_torch_hub_cache(caches, monkeypatch) -> None:
    monkeypatch.setenv("VISIONBENCH_OFFLINE", "1")
    message, _ = _timed_error("timm:legacy_seresnet18")  # one of timm's few weights not on the Hugging Face hub
    assert f"place it at {caches['torch'] / 'seresnet18-4bb0ce65.pth'}" in message, message


def _sleep_then_fail(*args, **kwargs):
    time.sleep(10)
    raise OSError("black hole")


@pytest.mark.parametrize("hole", ["name resolution", "connect"])
@pytest.mark.parametrize("model_name", ["resnet18", "torchvision:resnet18"])
def test_blocked_network_is_a_one_line_error_within_2_s(hole, model_name, caches, monkeypatch) -> None:
    if hole == "connect":  # resolves, then the connection never answers
        monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", a[:2])])
        monkeypatch.setattr(socket.socket, "connect", _sleep_then_fail)
    else:
        monkeypatch.setattr(socket, "getaddrinfo", _sleep_then_fail)
    message, seconds = _timed_error(model_name)
    assert seconds < OFFLINE_SECONDS, f"{seconds:.2f} s"
    assert "\n" not in message and f"did not answer within {CONNECT_SECONDS} s" in message, message
    assert "model.safetensors" in message if model_name == "resnet18" else "resnet18-f37072fd.pth" in message


def test_behind_a_proxy_the_proxy_is_what_must_answer(caches, web, monkeypatch) -> None:
    monkeypatch.setattr(socket, "create_connection", _connect_local)  # only the local proxy answers
    assert "did not answer" in offline_reason("https://huggingface.co/timm")
    monkeypatch.setenv("HTTPS_PROXY", web["url"])
    assert offline_reason("https://huggingface.co/timm") is None
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    assert "did not answer" in offline_reason("https://huggingface.co/timm")


def _connect_local(address: tuple[str, int], timeout: float) -> socket.socket:
    if address[0] != "127.0.0.1":
        _sleep_then_fail()
    return _REAL_CREATE_CONNECTION(address, timeout=timeout)


def test_names_without_imagenet_weights_are_refused() -> None:
    with pytest.raises(UserError, match="no ImageNet weights are known for 'small_cnn'; expected a torchvision:<name>"):
        imagenet_weights("small_cnn")
    with pytest.raises(UserError, match="timm has no weights 'resnet18.nope'; its tags: .*a1_in1k"):
        imagenet_weights("timm:resnet18", "nope")
    with pytest.raises(UserError, match="torchvision has no weights for 'no_such_net'"):
        imagenet_weights("torchvision:no_such_net")


@pytest.mark.parametrize("source", ["imagenet", "imagenet:a1_in1k", "timm"])  # `timm`: the older spelling
def test_each_spelling_of_model_pretrained_reaches_the_library_weights(source, caches, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(UserError, match="timm's weights resnet18.a1_in1k are not in the Hugging Face cache"):
        load_pretrained(torch.nn.Linear(1, 1), source, "resnet18")  # refused before the model is looked at
    assert time.monotonic() - start < OFFLINE_SECONDS
