"""Checkpoints and weights files: their SHA-256 digest round trip, corruption caught on load (a flipped bit in a
tensor, a record whose CRC-32 no longer matches), non-finite weights refused, files without a digest (older runs,
a user's own safetensors) accepted when finite, and torch's advice never repeated for a refused pickle."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

from visionbench.engine.checkpoint import (
    DIGEST_KEY,
    FORMAT,
    MAX_NODES,
    load_checkpoint,
    load_weights,
    read_weights,
    save_checkpoint,
    save_weights,
    state_digest,
)
from visionbench.errors import UserError


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3)).eval()


def _ready(model: nn.Module) -> nn.Module:
    model(torch.zeros(1, 1, 8, 8))  # materialise the lazy layer
    return model


def _state(model: nn.Module) -> dict:
    """A training state shaped like the trainer's: tensors, nested dicts, tuples, lists of rows, Python scalars."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    optimizer.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "train_state": {"epoch": 2, "step": 17, "rows": [{"epoch": 1, "val/acc1": 0.5, "note": "é"}], "nan": None},
        "rng": {"torch": torch.get_rng_state(), "python": (3, tuple(range(5)), None)},
    }


def _flip_tensor_byte(path: Path, name: str, value: float) -> None:
    """Rewrite safetensors `path` with one element of `name` changed but the stored metadata (digest) kept."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors[name].view(-1)[0] = value
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def test_weights_carry_a_digest_and_load_back_bit_identical(tmp_path):
    model = _ready(_model())
    path = tmp_path / "w.safetensors"
    save_weights(path, model, {"epoch": "3"})
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["epoch"] == "3" and len(metadata[DIGEST_KEY]) == 64, metadata
    other = _ready(_model(seed=1))
    load_weights(path, other)
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("value", [float("nan"), 0.123456])
def test_a_changed_tensor_in_weights_is_a_checksum_error_naming_the_file(tmp_path, value):
    """A finite wrong value is caught too: the digest, not only the finite check."""
    path = tmp_path / "w.safetensors"
    save_weights(path, _ready(_model()))
    _flip_tensor_byte(path, "0.weight", value)
    with pytest.raises(UserError, match=f"{path}: checksum mismatch: the file is corrupted"):
        read_weights(path)


def test_weights_without_a_digest_are_accepted_when_finite_and_refused_when_not(tmp_path):
    """Runs written before the digest, and a user's own safetensors (model.pretrained), have none."""
    tensors = {k: v.clone() for k, v in _ready(_model()).state_dict().items()}
    path = tmp_path / "own.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    assert all(torch.equal(read_weights(path)[k], v) for k, v in tensors.items())
    for bad in (float("nan"), float("inf"), -float("inf")):
        tensors["1.running_var"][2] = bad
        safetensors.torch.save_file(tensors, str(path))
        with pytest.raises(
            UserError, match=r"own.safetensors: the weights hold NaN or infinite values \(in '1.running_var'"
        ):
            read_weights(path)


def test_non_finite_weights_saved_with_a_valid_digest_are_refused(tmp_path):
    model = _ready(_model())
    with torch.no_grad():
        model[0].bias[1] = float("nan")
    save_weights(tmp_path / "w.safetensors", model)
    with pytest.raises(UserError, match=r"w.safetensors: the weights hold NaN or infinite values \(in '0.bias'\)"):
        read_weights(tmp_path / "w.safetensors")


def test_checkpoint_round_trip_keeps_every_value_and_checks_the_digest(tmp_path):
    state = _state(_ready(_model()))
    path = tmp_path / "last"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert "sha256" not in loaded and loaded["format"] == FORMAT
    assert state_digest({"format": FORMAT, **state}) == state_digest(loaded), "what was saved is what was read"


def test_a_changed_value_in_a_checkpoint_is_a_checksum_error(tmp_path):
    """torch.save again with one weight changed and the old digest kept (valid CRC-32s: only the digest sees it)."""
    path = tmp_path / "last"
    save_checkpoint(path, _state(_ready(_model())))
    state = torch.load(path, weights_only=True)
    state["model"]["0.weight"].view(-1)[3] += 1e-3
    torch.save(state, path)
    with pytest.raises(UserError, match=f"{path}: checksum mismatch: the file is corrupted"):
        load_checkpoint(path)
    state["model"]["0.weight"].view(-1)[3] -= 1e-3
    state["train_state"]["epoch"] = 3  # not only tensors: the epoch a resume would continue from
    torch.save(state, path)
    with pytest.raises(UserError, match="checksum mismatch"):
        load_checkpoint(path)


def test_a_flipped_bit_in_a_checkpoint_record_is_caught_by_its_crc(tmp_path):
    path = tmp_path / "last"
    save_checkpoint(path, _state(_ready(_model())))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    # the record's data follows its local header (30 bytes, the name and the extra field torch pads with)
    name_len, extra_len = (
        int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    data[info.header_offset + 30 + name_len + extra_len + 1] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"last: checksum mismatch in its record 'archive/data/0'"):
        load_checkpoint(path)


def test_a_checkpoint_without_a_digest_is_accepted_when_finite(tmp_path):
    """Checkpoints of runs written before the digest."""
    state = {"format": FORMAT, **_state(_ready(_model()))}
    path = tmp_path / "last"
    torch.save(state, path)
    assert state_digest(load_checkpoint(path)) == state_digest(state)
    state["model"]["0.weight"].view(-1)[0] = float("inf")
    torch.save(state, path)
    with pytest.raises(UserError, match=r"last \(model\): the weights hold NaN or infinite values \(in '0.weight'\)"):
        load_checkpoint(path)


def test_a_pickled_call_is_refused_in_our_words_never_with_torchs_advice(tmp_path):
    class Call:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "model": Call()}, buffer)
    for name, content in (("zip", buffer.getvalue()), ("bare", pickle.dumps(Call(), protocol=2))):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(UserError) as e:
            load_checkpoint(path)
        message = str(e.value)
        assert message.startswith(f"{path}: refused: not a visionbench checkpoint; it holds a call to "), message
        assert "system" in message and "\n" not in message, message
        for advice in ("weights_only", "safe_globals", "allowlist", "trust"):
            assert advice not in message, message
    assert not (tmp_path / "pwned").exists()


def test_a_self_referencing_state_is_refused_before_its_digest_explodes(tmp_path):
    """A pickle can reference one list from another a billion times in a few bytes: the digest walks a bounded
    number of objects."""
    nested: list = [0.0]
    for _ in range(40):  # 2**40 leaves when walked, 40 lists in memory
        nested = [nested, nested]
    path = tmp_path / "last"
    torch.save({"format": FORMAT, "rows": nested, "sha256": "0" * 64}, path)
    with pytest.raises(UserError, match=f"more than {MAX_NODES} objects"):
        load_checkpoint(path)


def test_a_compressed_archive_is_refused_without_inflating_it(tmp_path):
    path = tmp_path / "last"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * 10_000_000)  # 10 MB of zeros in a few KB
    assert path.stat().st_size < 100_000
    with pytest.raises(UserError, match="compressed records"):
        load_checkpoint(path)


@pytest.mark.parametrize("reader", [load_checkpoint, read_weights])
def test_only_regular_files_are_read(tmp_path, reader):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    for path in (tmp_path / "fifo", tmp_path / "folder", Path("/dev/zero")):
        with pytest.raises(UserError, match="not a regular file"):
            reader(path)
