"""The lensing simulator: shapes and values per preset, determinism whatever the workers and chunks, resume of a killed
generation (in process and a real SIGKILL), the cache, the fused point-mass sum against lenstronomy's own profiles,
the CLI, and the `deeplense` dataset reading what it writes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from visionbench.cli.main import main
from visionbench.config import load_config
from visionbench.data import lensing_sim
from visionbench.data.deeplense import deeplense
from visionbench.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def _arrays(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(folder / "images.npy"), np.load(folder / "targets.npy")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 Model II regression images written in one chunk by one process."""
    return lensing_sim.simulate("model_ii", 24, tmp_path_factory.mktemp("ref") / "sim", seed=7, chunk_size=24)


@pytest.mark.parametrize(("preset", "size"), [("model_i", 150), ("model_ii", 64), ("model_iii", 64)])
def test_each_preset_writes_its_shape_values_and_meta(tmp_path: Path, preset: str, size: int) -> None:
    n = 100
    folder = lensing_sim.simulate(preset, n, tmp_path / preset, seed=1, chunk_size=32)
    images, targets = _arrays(folder)
    assert images.shape == (n, 1, size, size) and images.dtype == np.float32 and np.isfinite(images).all()
    assert targets.shape == (n,) and targets.dtype == np.float32
    assert ((targets >= -24) & (targets <= -22)).all() and len(set(targets.tolist())) == n
    assert targets.min() < -23.5 and targets.max() > -22.5, "U(-24, -22) covers its range"
    if preset == "model_i":
        assert (images >= 0).all() and (images == np.round(images)).all(), "Model I images are Poisson counts"
    else:
        assert images.min() < 0 < images.max(), "e-/s with zero-mean read and sky noise"
    # the lensed arc is brighter than the border, which holds noise only
    centre = images[:, 0, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4].mean()
    assert centre > 3 * abs(images[:, 0, :4, :].mean())
    meta = lensing_sim.read_meta(folder)
    assert meta["complete"] is True and meta["n"] == n and meta["image_shape"] == [1, size, size]
    assert meta["lenstronomy"] == lensing_sim.lenstronomy_version() and meta["target"] == "log10_m_a"
    assert sorted(p.name for p in folder.iterdir()) == ["images.npy", "meta.json", "targets.npy"]


def test_another_seed_gives_other_images(tmp_path: Path, reference: Path) -> None:
    other_seed = lensing_sim.simulate("model_ii", 4, tmp_path / "s8", seed=8)
    assert not np.array_equal(_arrays(other_seed)[0], _arrays(reference)[0][:4])


@pytest.mark.parametrize("preset", ["model_i", "model_ii", "model_iii"])
def test_every_preset_is_the_same_for_any_workers_chunks_or_interruption(tmp_path: Path, preset: str) -> None:
    reference = _arrays(lensing_sim.simulate(preset, 12, tmp_path / "ref", seed=2, chunk_size=12))
    pooled = _arrays(lensing_sim.simulate(preset, 12, tmp_path / "pool", seed=2, workers=2, chunk_size=5))

    def interrupt(done: int, total: int) -> None:
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lensing_sim.simulate(preset, 12, tmp_path / "resumed", seed=2, chunk_size=4, progress=interrupt)
    resumed = _arrays(lensing_sim.simulate(preset, 12, tmp_path / "resumed", seed=2, chunk_size=4))
    for arrays in (pooled, resumed):
        for ours, theirs in zip(arrays, reference, strict=True):
            np.testing.assert_array_equal(ours, theirs)


def test_a_killed_generation_resumes_where_it_stopped(tmp_path: Path, reference: Path) -> None:
    seen = []

    def die_after_two_chunks(done: int, total: int) -> None:
        seen.append(done)
        if done >= 10:
            raise KeyboardInterrupt

    folder = tmp_path / "sim"
    with pytest.raises(KeyboardInterrupt):
        lensing_sim.simulate("model_ii", 24, folder, seed=7, chunk_size=5, progress=die_after_two_chunks)
    assert seen == [0, 5, 10]
    assert json.loads((folder / "progress.json").read_text())["done"] == 10 and not (folder / "meta.json").exists()
    with pytest.raises(UserError, match="not complete.*simulate-lensing --preset model_ii --n 24 --seed 7") as e:
        deeplense(path=str(folder))
    assert "\n" not in str(e.value)

    seen.clear()
    lensing_sim.simulate("model_ii", 24, folder, seed=7, chunk_size=5, progress=lambda d, t: seen.append(d))
    assert seen == [10, 15, 20, 24], "starts after the last chunk on disk"
    for ours, theirs in zip(_arrays(folder), _arrays(reference), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert not (folder / "progress.json").exists()


def test_a_sigkilled_cli_generation_resumes_to_the_same_images(tmp_path: Path, reference: Path) -> None:
    folder = tmp_path / "sim"
    command = [sys.executable, "-m", "visionbench", "data", "simulate-lensing", "--preset", "model_ii"]
    command += ["--n", "24", "--seed", "7", "--chunk-size", "2", "--out", str(folder)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    progress = folder / "progress.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if progress.exists() and json.loads(progress.read_text() or "{}").get("done", 0) >= 4:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = json.loads(progress.read_text())["done"]
    assert 4 <= done < 24 and not (folder / "meta.json").exists(), "killed part way"

    finish = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    assert f"{24 - done} images" in finish.stdout, finish.stdout
    for ours, theirs in zip(_arrays(folder), _arrays(reference), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_classes_variant_cycles_none_cdm_axion(tmp_path: Path) -> None:
    folder = lensing_sim.simulate("model_iii", 6, tmp_path / "cls", seed=3, variant="classes")
    images, targets = _arrays(folder)
    assert targets.dtype == np.int64 and targets.tolist() == [0, 1, 2, 0, 1, 2]
    meta = lensing_sim.read_meta(folder)
    assert meta["substructure"] == "mixed" and meta["class_names"] == ["no_substructure", "cdm", "axion"]
    for i, kind in enumerate(("none", "cdm", "axion")):
        alone, _ = lensing_sim.simulate_image("model_iii", kind, np.random.default_rng([3, i]))
        np.testing.assert_array_equal(images[i, 0], alone)


def test_the_axion_mass_and_the_substructure_change_the_image() -> None:
    def draw(kind: str, log10_m_a: float) -> np.ndarray:
        return lensing_sim.simulate_image("model_iii", kind, np.random.default_rng(11), log10_m_a)[0]

    light, heavy = draw("axion", -22.0), draw("axion", -24.0)
    smooth = draw("none", -23.0)
    scale = np.abs(smooth).max()
    for a, b in ((light, smooth), (heavy, smooth), (heavy, light)):
        assert np.abs(a - b).mean() > 1e-3 * scale, "the vortex (its length set by m_a) moves the arcs"
    _, drawn = lensing_sim.simulate_image("model_iii", "axion", np.random.default_rng(11))
    assert -24 <= drawn <= -22


@pytest.mark.parametrize("preset", ["model_i", "model_ii", "model_iii"])
@pytest.mark.parametrize("kind", ["cdm", "axion"])
def test_fused_point_masses_match_lenstronomys_one_profile_per_mass(preset: str, kind: str) -> None:
    fused = lensing_sim.Renderer(lensing_sim.PRESETS[preset], kind)
    plain = lensing_sim.Renderer(lensing_sim.PRESETS[preset], kind, fused=False)
    assert fused.fused and not plain.fused
    a, mass_a = fused.draw(np.random.default_rng([5, 2]))
    b, mass_b = plain.draw(np.random.default_rng([5, 2]))
    assert mass_a == mass_b
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max())


def test_einstein_radius_of_the_main_lens_is_the_released_datas() -> None:
    assert lensing_sim.einstein_radius(1e12) == pytest.approx(1.2815, abs=5e-4)


def test_cache_is_keyed_by_parameters_and_lenstronomy_version(tmp_path: Path) -> None:
    path = lensing_sim.cache_path("model_iii", 5, 2)
    assert path.parent == tmp_path / "xdg-cache" / "visionbench" / "lensing"
    assert path.name == f"model_iii-regression-axion-n5-s2-lt{lensing_sim.lenstronomy_version()}"
    assert lensing_sim.cache_path("model_iii", 5, 3) != path != lensing_sim.cache_path("model_ii", 5, 2)
    folder = lensing_sim.simulate("model_iii", 5, seed=2)
    assert folder == path
    stamp = (folder / "images.npy").stat().st_mtime_ns
    calls = []
    assert lensing_sim.simulate("model_iii", 5, seed=2, progress=lambda d, t: calls.append(d)) == path
    assert calls == [] and (folder / "images.npy").stat().st_mtime_ns == stamp, "a complete cache is reused"
    data = deeplense(preset="model_iii", n=5, seed=2, test_fraction=0.4, download=False)
    assert len(data.train) == 3 and len(data.test) == 2


def test_a_folder_holding_another_simulation_is_refused(tmp_path: Path) -> None:
    folder = lensing_sim.simulate("model_iii", 3, tmp_path / "sim", seed=0)
    with pytest.raises(UserError, match="holds a simulation with preset=model_iii, n=3") as e:
        lensing_sim.simulate("model_iii", 4, folder, seed=0)
    assert str(folder) in str(e.value)
    (folder / "meta.json").unlink()
    (folder / "progress.json").write_text(json.dumps({"params": {"preset": "model_i"}, "done": 1}))
    with pytest.raises(UserError, match="unfinished simulation with preset=model_i"):
        lensing_sim.simulate("model_iii", 3, folder, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preset": "model_iv"}, "preset: expected one of model_i, model_ii, model_iii, got 'model_iv'"),
        ({"n": 0}, "n: expected an integer >= 1, got 0"),
        ({"variant": "maps"}, "variant: expected one of regression, classes"),
        ({"substructure": "cdm"}, "substructure: variant 'regression' needs 'axion'"),
        ({"workers": 0}, "workers: expected an integer >= 1"),
    ],
)
def test_bad_options_are_one_line_user_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    options = {"preset": "model_ii", "n": 2, "out": tmp_path / "sim", **kwargs}
    with pytest.raises(UserError) as e:
        lensing_sim.simulate(**options)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "sim").exists(), "nothing written"


def test_cli_simulates_reports_and_then_finds_it_complete(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["data", "simulate-lensing", "--preset", "model_iii", "--n", "4", "--seed", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path}  (4 images in ") and "images/s" in out
    assert main(args) == 0
    assert "already complete: nothing simulated" in capsys.readouterr().out
    assert main([*args[:-2], "--out", str(tmp_path / "b"), "--variant", "classes"]) == 0
    assert _arrays(tmp_path / "b")[1].tolist() == [0, 1, 2, 0]


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sim"
    assert main(["data", "simulate-lensing", "--preset", "model_x", "--n", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "preset: expected one of model_i, model_ii, model_iii" in err
    assert not out.exists()


def test_missing_lenstronomy_is_one_line_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "lenstronomy", None)  # makes `import lenstronomy` raise ImportError
    out = tmp_path / "sim"
    assert main(["data", "simulate-lensing", "--preset", "model_ii", "--n", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lenstronomy is not installed; pip install 'visionbench[lensing]'" in err
    assert not out.exists()


def test_deeplense_reads_a_simulated_folder_normalised_per_image(tmp_path: Path, reference: Path) -> None:
    data = deeplense(path=str(reference), test_fraction=0.25)
    assert data.info.task == "regression" and data.info.input_size == (1, 64, 64)
    assert len(data.train) == 18 and len(data.test) == 6
    images = torch.cat([data.train.images, data.test.images])
    flat = images.flatten(1)
    assert torch.allclose(flat.min(1).values, torch.zeros(24)) and torch.allclose(flat.max(1).values, torch.ones(24))
    targets = torch.cat([data.train.targets, data.test.targets]).flatten()
    np.testing.assert_allclose(targets.numpy(), _arrays(reference)[1])


DEEPLENSE_CONFIGS = sorted((ROOT / "configs" / "deeplense").glob("*.yaml"))


@pytest.mark.parametrize("config", DEEPLENSE_CONFIGS, ids=lambda p: p.stem)
def test_deeplense_configs_run_their_short_variant_on_a_tiny_simulation(
    tmp_path: Path, capsys: pytest.CaptureFixture, short_variant, config: Path
) -> None:
    documented = short_variant(config)
    keys = {s.split("=")[0] for s in documented}
    # a config with ImageNet weights runs its short variant from random init (nothing to download)
    assert keys - {"model.pretrained"} == {"data.kwargs.n", "trainer.epochs"}, documented
    assert ("model.pretrained=null" in documented) == (load_config(config).model.pretrained is not None), documented
    out = tmp_path / "runs"
    tiny = ["data.kwargs.n=12", "trainer.epochs=1", "trainer.batch_size=4", "trainer.device=cpu"]
    tiny += [f"trainer.out_dir={out}", "trainer.checkpoint_every_minutes=null", "trainer.progress=lines"]
    assert main(["train", str(config), *sum((["--set", s] for s in documented + tiny), [])]) == 0, capsys.readouterr()
    (summary_path,) = out.glob(f"{config.stem}/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 1
    final = summary["final"]
    if "classes" in config.stem:
        assert 0 <= final["test/auroc"] <= 1 and list(summary["test_details"]["per_class_auroc"]) == [
            "no_substructure",
            "cdm",
            "axion",
        ]
    else:
        assert summary["main_metric"] == "mae" and math.isfinite(final["test/mae"])
