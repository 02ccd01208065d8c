"""The libraries' own ImageNet weights (`model.pretrained: imagenet`): which file a model name takes, where that
library caches it, and its tensors.

`imagenet_weights(model_name, tag)` answers for three kinds of names:

- `torchvision:<name>`: torchvision's weights enum for the name (`get_model_weights`), its `DEFAULT` member or the
  one `tag` names (`IMAGENET1K_V1` is what `pretrained=True` gave). The file is the one torchvision itself caches:
  `<torch hub dir>/checkpoints/<basename of the weights URL>` (`$TORCH_HOME/hub`, default `~/.cache/torch/hub`),
  read with `torch.load(weights_only=True)`.
- `timm:<name>[.<tag>]` and the registered names built from a timm architecture (TIMM_SOURCES): timm's pretrained
  config for the name (`tag`, else the name's own tag, else timm's default) gives a Hugging Face repository
  (`timm/<arch>.<tag>`), looked up in the Hugging Face cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, default
  `~/.cache/huggingface/hub`), or, for the few weights timm has only at a URL, a file in the torch hub cache.
  timm loads the file itself (`pretrained_cfg_overlay=dict(file=...)`), so the architecture's checkpoint filter
  applies (old key layouts, position embeddings) as in `timm.create_model(name, pretrained=True)`. (Handing timm
  the tensors instead, `dict(state_dict=...)`, deep-copies them with its config: 0.85 s more for ResNet-18.)
- anything else: a UserError naming the names that have ImageNet weights.

A cached file is used without the network, once its SHA-256 matches what its name says (torch hub names carry a
prefix, `resnet18-f37072fd.pth`; a Hugging Face snapshot file links to `blobs/<SHA-256>`). A missing file is
downloaded when online. Offline (`HF_HUB_OFFLINE` or `VISIONBENCH_OFFLINE` set, or the host not answering a TCP
connect within CONNECT_SECONDS, name resolution included) it is one UserError line, at once and without retries,
naming the file to fetch and the exact place to put it. The environment is read at each call (huggingface_hub
reads its own once, at import).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import torch

from visionbench.errors import UserError, first_line
from visionbench.utils.bounded import WEIGHTS_FILE_BYTES, check_memory, open_regular

log = logging.getLogger(__name__)

# registered zoo names built from a timm architecture -> that architecture (for model.pretrained: imagenet)
TIMM_SOURCES = {
    "vgg16": "vgg16",
    "vgg16_bn": "vgg16_bn",
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "mobilenetv2": "mobilenetv2_100",
    "vit_r50_hybrid": "vit_base_r50_s16_224",
}

# One TCP connect (name resolution included) to the weights' host: a reachable host answers in well under a second,
# and offline must be an error within 2 s, against the 52-62 s of huggingface_hub's own retries.
CONNECT_SECONDS = 1.5
# A download that stalls this long between two reads is abandoned (torch.hub's download has no timeout of its own).
STALL_SECONDS = 30.0
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of a boolean environment variable
# timm's own order of files in a weights repository (timm.models._hub.load_state_dict_from_hf)
_HF_FILES = ("model.safetensors", "pytorch_model.bin")


def imagenet_weights(model_name: str, tag: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The ImageNet weights of `model_name`'s architecture, as its library loads them.

    Args:
        model_name: `torchvision:<name>`, `timm:<name>` or a name of TIMM_SOURCES.
        tag: from `imagenet:<tag>`: torchvision's weights member (`IMAGENET1K_V2`) or timm's pretrained tag
            (`augreg2_in21k_ft_in1k`); None for the library's default.

    Returns:
        The state_dict (keys as the library names them, head included) and how to name the weights in messages
        (which weights, and the file they came from).

    Raises:
        UserError: no weights for the name or tag, offline with the file missing (naming the file and where to put
            it), a failed download, or a file that is not what its name says.
    """
    if model_name.startswith("torchvision:"):
        return _torchvision_weights(model_name.removeprefix("torchvision:"), tag)
    timm_name = model_name.removeprefix("timm:") if model_name.startswith("timm:") else TIMM_SOURCES.get(model_name)
    if timm_name is None:
        raise UserError(
            f"model.pretrained: no ImageNet weights are known for {model_name!r}; expected a torchvision:<name> or "
            f"timm:<name> model, or one of {', '.join(TIMM_SOURCES)}"
        )
    return _timm_weights(timm_name, tag)


# ---------------------------------------------------------------------------------------------------------------
# torchvision


def _torchvision_weights(name: str, tag: str | None) -> tuple[dict[str, torch.Tensor], str]:
    from torchvision.models import get_model_weights

    try:
        choices = get_model_weights(name)
    except (ValueError, KeyError):
        raise UserError(f"model.pretrained: torchvision has no weights for {name!r}") from None
    if tag is None:
        weights = choices.DEFAULT
    else:
        weights = choices.__members__.get(tag) or choices.__members__.get(tag.upper())
        if weights is None:
            raise UserError(
                f"model.pretrained: imagenet:{tag}: torchvision's {name} has no weights {tag!r}; expected one of "
                f"{', '.join(choices.__members__)}"
            )
    what = f"torchvision's weights {type(weights).__name__}.{weights.name}"
    path = _url_weights(weights.url, what)
    tensors = _read_torch_file(path, what)
    if not isinstance(tensors, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in tensors.items()):
        raise UserError(f"model.pretrained: {path}: not {what} (expected a mapping of names to tensors)")
    return tensors, f"{what} ({path})"


# ---------------------------------------------------------------------------------------------------------------
# timm


def _timm_weights(timm_name: str, tag: str | None) -> tuple[dict[str, torch.Tensor], str]:
    import timm
    from timm.models import get_pretrained_cfg

    arch = timm_name.partition(".")[0]
    full = f"{arch}.{tag}" if tag else timm_name
    if not timm.is_model(arch):
        raise UserError(f"model.pretrained: timm has no model {arch!r}")
    try:
        cfg = get_pretrained_cfg(full)
    except RuntimeError:  # a tag the architecture does not have
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        expected = f"its tags: {', '.join(tags)}" if tags else "timm has no pretrained weights for it"
        raise UserError(f"model.pretrained: timm has no weights {full!r}; {expected}")
    full, what = f"{arch}.{cfg.tag}", f"timm's weights {arch}.{cfg.tag}"
    if cfg.hf_hub_id:
        path = _hf_weights(cfg.hf_hub_id, cfg.hf_hub_filename, what)
    else:
        path = _url_weights(cfg.url, what)
    _check_file(path, what)
    # timm loads the file itself, as for its own download: its order of EMA and wrapped state_dicts, the
    # architecture's checkpoint filter, label offsets, a strict match. A file from the Hugging Face hub is a
    # state_dict whatever the config's custom_load says (that is for the original .npz at the URL).
    overlay = dict(file=str(path), custom_load=False) if cfg.hf_hub_id else dict(file=str(path))
    try:
        model = timm.create_model(full, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as e:  # noqa: BLE001  (safetensors, the unpickler, a filter or a strict load: their own types)
        raise UserError(f"model.pretrained: {path}: not {what} ({_load_failure(e)})") from None
    return model.state_dict(), f"{what} ({path})"


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it, from the environment now (its constants are
    read once, at import)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("HF_HOME") or Path(xdg) / "huggingface").expanduser() / "hub"


def _hf_weights(hub_id: str, filename: str | None, what: str) -> Path:
    """The cached file of a weights repository (`timm/<arch>.<tag>[@revision]`), downloaded when missing."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError
    from huggingface_hub.file_download import repo_folder_name

    repo, _, revision = hub_id.partition("@")
    names = (filename,) if filename else _HF_FILES
    cache = _hf_cache_dir()
    for name in names:
        hit = try_to_load_from_cache(repo, name, cache_dir=cache, revision=revision or None)
        if isinstance(hit, str):
            return Path(hit)
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/{repo}/resolve/{revision or 'main'}/{names[0]}"
    folder = cache / repo_folder_name(repo_id=repo, repo_type="model")
    _require_online(
        url,
        lambda why: (
            f"model.pretrained: {what} are not in the Hugging Face cache {cache} and {why}; on a machine with internet "
            f"run `hf download {repo} {names[0]}` and copy the folder {folder.name} from its cache into {cache}, "
            f"or download {url} and give that file's path as model.pretrained"
        ),
    )
    for name in names:
        log.info("downloading %s (%s) into %s", what, name, cache)
        try:
            return Path(hf_hub_download(repo, name, revision=revision or None, cache_dir=cache, endpoint=endpoint))
        except EntryNotFoundError:
            continue
        except Exception as e:  # noqa: BLE001  (httpx, hub and file errors: one line either way)
            reason = first_line(e)
            raise UserError(
                f"model.pretrained: downloading {name} of {repo} from {endpoint} failed ({reason})"
            ) from None
    raise UserError(f"model.pretrained: {endpoint}/{repo} holds none of {', '.join(names)}")


# ---------------------------------------------------------------------------------------------------------------
# Files at a URL (torchvision's, and timm's few weights not on the Hugging Face hub): the torch hub cache


def _hash_prefix(filename: str) -> str | None:
    """The SHA-256 prefix a torch hub file name carries (`resnet18-f37072fd.pth`), as torch.hub reads it."""
    match = torch.hub.HASH_REGEX.search(filename)
    return match.group(1) if match and len(match.group(1)) >= 8 else None


def _url_weights(url: str, what: str) -> Path:
    """`url`'s file in the torch hub cache (`<torch.hub.get_dir()>/checkpoints/<basename>`), downloaded when
    missing; the download is checked against the name's hash prefix before it is put in place."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlsplit(url).path).name
    if path.exists():
        return path
    _require_online(
        url,
        lambda why: (
            f"model.pretrained: {what} are not in the torch hub cache and {why}; download {url} and place it at "
            f"{path} (TORCH_HOME/hub/checkpoints), or give that file's path as model.pretrained"
        ),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s from %s to %s", what, url, path)
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(STALL_SECONDS)  # urllib's urlopen inside torch.hub reads the default
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=_hash_prefix(path.name))
    except Exception as e:  # noqa: BLE001  (URLError, timeouts, torch.hub's hash RuntimeError)
        raise UserError(f"model.pretrained: downloading {url} to {path} failed ({first_line(e)})") from None
    finally:
        socket.setdefaulttimeout(before)
    return path


def _expected_sha256(path: Path) -> tuple[str, str] | None:
    """(hex digits the file's SHA-256 begins with, the name that says so), or None when nothing does: torch hub
    names carry a prefix (`resnet18-f37072fd.pth`), and a Hugging Face snapshot links to `blobs/<its SHA-256>`."""
    prefix = _hash_prefix(path.name)
    if prefix is not None:
        return prefix, path.name
    blob = path.resolve()
    if blob.parent.name == "blobs" and len(blob.name) == 64 and all(c in "0123456789abcdef" for c in blob.name):
        return blob.name, f"blobs/{blob.name}"
    return None


def _check_file(path: Path, what: str, f: IO[bytes] | None = None) -> None:
    """A weights file before it is loaded: a regular file of at most WEIGHTS_FILE_BYTES that fits in memory, with
    the SHA-256 its name gives, if any (read from `f` when given, which is left at its start)."""
    if f is None:
        with open_regular(path, "weights file", WEIGHTS_FILE_BYTES) as f:
            return _check_file(path, what, f)
    check_memory(os.fstat(f.fileno()).st_size, path, "weights file")
    expected = _expected_sha256(path)
    if expected is not None:
        digest = hashlib.sha256()
        while chunk := f.read(1 << 20):
            digest.update(chunk)
        if not digest.hexdigest().startswith(expected[0]):
            raise UserError(
                f"model.pretrained: {path}: its SHA-256 is not the one its name {expected[1]} gives: the file is "
                f"damaged or not {what}; delete it (it is downloaded again when online) or place the original"
            )
        f.seek(0)


def _read_torch_file(path: Path, what: str) -> object:
    """A `torch.save` file checked by `_check_file`, read as every weights file is (`checkpoint.torch_load`:
    `weights_only=True`, nothing in it is run)."""
    from visionbench.engine.checkpoint import torch_load

    _check_file(path, what)
    return torch_load(path, f"model.pretrained: {path}", "weights file", kind=f"torch.save file of {what}")


def _load_failure(e: Exception) -> str:
    """Why a file did not load, without torch's advice to load it with weights_only=False (which runs its code)."""
    if "weights_only" in str(e) or "WeightsUnpickler" in str(e):
        return "it holds pickled Python objects, which are never run"
    return first_line(e)


# ---------------------------------------------------------------------------------------------------------------
# Online or not


def offline_reason(url: str) -> str | None:
    """Why nothing can be downloaded from `url` now, or None: HF_HUB_OFFLINE or VISIONBENCH_OFFLINE set, or no TCP
    connection to its host (or to the proxy for its scheme) within CONNECT_SECONDS, name resolution included."""
    for var in ("VISIONBENCH_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in _TRUE:
            return f"{var} is set"
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    failures: list[str] = []
    done = threading.Event()

    def connect() -> None:
        # In a thread, waited for at most CONNECT_SECONDS: name resolution has no timeout of its own (a dead
        # resolver takes 5 s a try), nor has the proxy-bypass lookup on some systems.
        try:
            proxy = urllib.request.getproxies().get(parts.scheme)
            if proxy and not urllib.request.proxy_bypass(host):
                via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
                socket.create_connection((via.hostname or "", via.port or 80), timeout=CONNECT_SECONDS).close()
            else:
                socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
        except OSError as e:
            failures.append(e.strerror or first_line(e))
        done.set()

    threading.Thread(target=connect, name="visionbench-connect-probe", daemon=True).start()
    if not done.wait(CONNECT_SECONDS):
        return f"{host} did not answer within {CONNECT_SECONDS} s"
    return f"{host} cannot be reached ({failures[0]})" if failures else None


def _require_online(url: str, missing: Callable[[str], str]) -> None:
    """Return when `url` can be fetched now; else raise `missing(reason)` at once (no retries)."""
    reason = offline_reason(url)
    if reason is not None:
        raise UserError(missing(reason))
