"""`analyze`: the analysis suite of the CIFAR-100 study on a trained run, on images of one split.

- `robustness`: the task's main metric under Gaussian noise, Gaussian blur and contrast reduction at 5 severities
  each (after Hendrycks & Dietterich's ImageNet-C corruptions), applied in pixel space [0, 1] before standardising.
- `consistency`: how often the prediction (the task's decision, with its threshold) stays the same under a horizontal
  flip and under shifts of 1 and 2 pixels (zero-padded), in four directions.
- `frequency`: the metric when only the low spatial frequencies (a centred disc of the 2-D FFT) or only the high
  ones are kept, at several radii (as fractions of the Nyquist radius).
- `pca`: the penultimate features projected on 2 principal components and embedded with t-SNE (scikit-learn),
  coloured by class.
- `erf`: the effective receptive field (Luo et al., 2016): |d (centre unit of the Grad-CAM layer) / d input|,
  averaged over images.
- `failures`: the most confident wrong decisions (regression: the largest errors) as an image grid and a table
  (analysis/failures.py).
- `shape_texture`: the cue-conflict shape bias on a folder of stimuli when one is given, and a proxy on the split's
  images (accuracy on patch-shuffled against low-pass and edge images) always (analysis/shape_texture.py).

Each part returns rows for a table and draws a figure into `<run>/analysis/`, which the run's report shows;
`run_suite` runs the parts asked for on a loaded run and writes their tables and figures.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from visionbench import layout
from visionbench.analysis import failures, shape_texture
from visionbench.analysis.tokens import reshape_transform
from visionbench.errors import UserError
from visionbench.models._builder import resolve_module

if TYPE_CHECKING:
    from visionbench.engine.inference import LoadedRun

SUITES = ("robustness", "consistency", "frequency", "pca", "erf", "failures", "shape_texture")
NOISE_STD = (0.04, 0.08, 0.12, 0.18, 0.26)  # pixel units
BLUR_SIGMA = (0.5, 0.75, 1.0, 1.5, 2.0)  # pixels
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.2)  # factor towards each image's mean
SHIFTS = (1, 2)
FREQ_RADII = (0.1, 0.2, 0.3, 0.5, 0.7)  # fractions of the Nyquist radius


class Evaluator:
    """The run's model and metric on pixel-space images: `score(pixels)` standardises, predicts in batches and
    returns the task's main metric; `predict(pixels)` returns the raw outputs, `outputs(pixels)` the activated ones."""

    def __init__(self, model: nn.Module, task, mean: torch.Tensor, std: torch.Tensor, batch_size: int = 256):
        self.model, self.task, self.batch_size = model.eval(), task, batch_size
        self.mean, self.std = mean[:, None, None], std[:, None, None]

    @torch.inference_mode()
    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels - self.mean) / self.std
        return torch.cat([self.model(x[i : i + self.batch_size]).float() for i in range(0, len(x), self.batch_size)])

    def outputs(self, pixels: torch.Tensor) -> torch.Tensor:
        """The task's activated outputs (probabilities, values in target units)."""
        return self.task.activate(self.predict(pixels))

    def score(self, pixels: torch.Tensor, targets: torch.Tensor) -> float:
        metrics = self.task.metrics()
        metrics.update(self.predict(pixels), targets)
        return float(metrics.compute()[self.task.main_metric])


def robustness(ev: Evaluator, pixels: torch.Tensor, targets: torch.Tensor) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    corruptions: dict[str, tuple[tuple[float, ...], Callable[[torch.Tensor, float], torch.Tensor]]] = {
        "gaussian_noise": (NOISE_STD, lambda x, s: x + s * torch.randn(x.shape, generator=gen)),
        "gaussian_blur": (BLUR_SIGMA, shape_texture.low_pass),
        "contrast": (
            CONTRAST,
            lambda x, c: (x - x.mean((1, 2, 3), keepdim=True)) * c + x.mean((1, 2, 3), keepdim=True),
        ),
    }
    clean = ev.score(pixels, targets)
    rows = [{"corruption": "none", "severity": 0, "level": 0.0, "metric": clean}]
    for name, (levels, fn) in corruptions.items():
        for severity, level in enumerate(levels, 1):
            score = ev.score(fn(pixels, level).clamp(0, 1), targets)
            rows.append({"corruption": name, "severity": severity, "level": level, "metric": score})
    return rows


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    H, W = x.shape[-2:]
    padded = F.pad(x, (abs(dx), abs(dx), abs(dy), abs(dy)))
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[..., top : top + H, left : left + W]


def consistency(ev: Evaluator, pixels: torch.Tensor) -> list[dict]:
    """How far the task's decision (`Task.decide`: the class, the positive labels, the values) stays the same
    under each transform (`Task.agreement`: the fraction unchanged; regression: the mean |change| of the output)."""
    task = ev.task
    base = task.decide(ev.outputs(pixels))
    variants = {"hflip": pixels.flip(-1)}
    for s in SHIFTS:
        for name, (dy, dx) in {"right": (0, s), "left": (0, -s), "down": (s, 0), "up": (-s, 0)}.items():
            variants[f"shift_{name}_{s}px"] = _shift(pixels, dy, dx)
    rows = []
    for name, x in variants.items():
        value, what = task.agreement(base, task.decide(ev.outputs(x)))
        rows.append({"transform": name, "value": value, "measure": what})
    return rows


def frequency(ev: Evaluator, pixels: torch.Tensor, targets: torch.Tensor) -> list[dict]:
    H, W = pixels.shape[-2:]
    fy = torch.fft.fftfreq(H)[:, None]
    fx = torch.fft.fftfreq(W)[None, :]
    radius = (fy.square() + fx.square()).sqrt() / 0.5  # 1.0 = Nyquist along an axis
    spectrum = torch.fft.fft2(pixels)
    rows = []
    for r in FREQ_RADII:
        for kind, mask in (("low_pass", radius <= r), ("high_pass", radius > r)):
            filtered = torch.fft.ifft2(spectrum * mask).real
            if kind == "high_pass":  # keep the mean brightness: only the structure is removed or kept
                filtered = filtered + pixels.mean((-2, -1), keepdim=True)
            rows.append({"filter": kind, "radius": r, "metric": ev.score(filtered.clamp(0, 1), targets)})
    return rows


@torch.inference_mode()
def penultimate(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Features before the classifier: `forward_head(..., pre_logits=True)` (timm's and our models' convention)."""
    out = []
    for i in range(0, len(x), batch_size):
        features = model.forward_features(x[i : i + batch_size])
        out.append(model.forward_head(features, pre_logits=True).flatten(1).float())
    return torch.cat(out)


def embeddings(features: torch.Tensor) -> dict[str, torch.Tensor]:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    f = features.numpy()
    pca = PCA(n_components=2, random_state=0).fit_transform(f)
    perplexity = min(30.0, max(2.0, (len(f) - 1) / 3))
    tsne = TSNE(n_components=2, init="pca", random_state=0, perplexity=perplexity).fit_transform(f)
    return {"pca": torch.from_numpy(pca), "tsne": torch.from_numpy(tsne)}


def effective_receptive_field(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(H, W) mean |gradient| of the centre unit of the Grad-CAM layer's map w.r.t. the input, scaled to [0, 1]."""
    layer = resolve_module(model, model.cam_layer)
    to_map = reshape_transform(model) or (lambda a: a)
    caught: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda mod, args, out: caught.append(out))
    total = torch.zeros(x.shape[-2:])
    try:
        for i in range(0, len(x), batch_size):
            caught.clear()
            xb = x[i : i + batch_size].detach().clone().requires_grad_(True)
            model(xb)
            fmap = to_map(caught[0])  # (B, C, h, w)
            h, w = fmap.shape[-2:]
            fmap[:, :, h // 2, w // 2].sum().backward()
            total += xb.grad.abs().sum((0, 1))
    finally:
        handle.remove()
    return total / total.max().clamp(min=1e-12)


def check_parts(suite: str) -> list[str]:
    """`--suite` (comma-separated) as the list of parts to run.

    Raises:
        UserError: an unknown part, or none at all.
    """
    parts = [p.strip() for p in suite.split(",") if p.strip()]
    unknown = [p for p in parts if p not in SUITES]
    if unknown or not parts:
        raise UserError(f"--suite {unknown[0] if unknown else suite!r}: expected some of {', '.join(SUITES)}")
    return parts


@dataclasses.dataclass(frozen=True)
class Options:
    """What some parts take beyond the split: the failure gallery's size and name of the split, the cue-conflict
    stimuli (`shape_texture.read_stimuli`, checked before any part runs)."""

    top_k: int = failures.TOP_K
    split: str = "test"
    stimuli: shape_texture.Stimuli | None = None


@dataclasses.dataclass
class Result:
    """What one part wrote: a table (its rows and CSV), or a figure alone (`rows` None)."""

    title: str
    path: Path
    rows: list[dict] | None = None


def run_suite(
    run: LoadedRun,
    run_dir: Path,
    images: torch.Tensor,
    targets: torch.Tensor,
    parts: list[str],
    options: Options | None = None,
) -> Iterator[Result]:
    """The `parts` of the suite, in SUITES' order, on a split's standardised images and targets: each table and
    figure written into `<run_dir>/analysis/`, each result yielded as soon as its table is written.

    Raises:
        UserError: `pca` on a run whose targets are not one class per image (its points are coloured by class); a
            cue-conflict image that cannot be read or whose output is not finite (naming the file).
    """
    from visionbench.engine.inference import pixels as to_pixels
    from visionbench.report import plots

    task, metric, out_dir = run.task, run.task.main_metric, run_dir / layout.ANALYSIS
    options = options or Options()
    ev = Evaluator(run.model, task, torch.tensor(run.info.mean or (0.0,)), torch.tensor(run.info.std or (1.0,)))
    pixels = to_pixels(run.info, images)
    out_dir.mkdir(exist_ok=True)
    if "robustness" in parts:
        rows = robustness(ev, pixels, targets)
        yield _table(out_dir / "robustness.csv", rows, f"robustness ({metric})")
        plots.plot_metric_lines(out_dir / "robustness.png", rows, "corruption", "severity", metric, "Robustness")
    if "consistency" in parts:
        yield _table(out_dir / "consistency.csv", consistency(ev, pixels), "consistency")
    if "frequency" in parts:
        rows = frequency(ev, pixels, targets)
        yield _table(out_dir / "frequency.csv", rows, f"frequency filtering ({metric})")
        plots.plot_metric_lines(out_dir / "frequency.png", rows, "filter", "radius", metric, "Frequency filtering")
    if "pca" in parts:
        if not task.one_class_per_image:
            raise UserError(f"--suite pca: colours points by class; {run_dir} is a {task.name} run")
        emb = embeddings(penultimate(run.model, images))
        yield Result(
            "embeddings", plots.plot_embeddings(out_dir / "embeddings.png", emb, targets, run.info.class_names)
        )
    if "erf" in parts:
        erf = effective_receptive_field(run.model, images[: min(len(images), 256)])
        yield Result("effective receptive field", plots.plot_erf(out_dir / "erf.png", erf, run.model.cam_layer))
    if "failures" in parts:
        yield _failures(run, out_dir, images, targets, options)
    if "shape_texture" in parts:
        yield from _shape_texture(run, ev, out_dir, pixels, targets, options.stimuli)


def _failures(run: LoadedRun, out_dir: Path, images: torch.Tensor, targets: torch.Tensor, options: Options) -> Result:
    from visionbench.engine.inference import SPLIT_BATCH_SIZE, display_images, predict_logits

    outputs = run.task.activate(predict_logits(run, images, SPLIT_BATCH_SIZE))
    found = failures.rank(run.task, outputs, targets, run.info.class_names, options.top_k)
    title = f"{len(found.rows)} most confident wrong decisions of {len(images)} {options.split} images"
    failures.draw(out_dir / f"{layout.FAILURES}.png", display_images(run.info, images), found, title)
    return _table(out_dir / f"{layout.FAILURES}.csv", found.rows, title, found.columns)


def _shape_texture(
    run: LoadedRun,
    ev: Evaluator,
    out_dir: Path,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    stimuli: shape_texture.Stimuli | None,
) -> Iterator[Result]:
    if stimuli is not None:
        decisions = shape_texture.decide_stimuli(run, stimuli)
        rows = shape_texture.shape_bias(stimuli, decisions)
        _table(out_dir / f"{layout.CUE_CONFLICT_DECISIONS}.csv", shape_texture.decision_rows(stimuli, decisions), "")
        shape_texture.plot_shape_bias(out_dir / f"{layout.CUE_CONFLICT}.png", rows)
        left_out = f", {stimuli.same_class} of one class left out" if stimuli.same_class else ""
        title = f"cue-conflict shape bias of {len(stimuli.files)} images in {stimuli.folder}{left_out}"
        yield _table(out_dir / f"{layout.CUE_CONFLICT}.csv", rows, title)
    metric = run.task.main_metric
    rows = shape_texture.proxy(ev, pixels, targets)
    shape_texture.plot_proxy(out_dir / f"{layout.SHAPE_TEXTURE_PROXY}.png", rows, metric)
    title = f"shape/texture PROXY ({metric}; patch-shuffled keeps texture, low-pass and edges keep shape)"
    yield _table(out_dir / f"{layout.SHAPE_TEXTURE_PROXY}.csv", rows, title)


def _table(path: Path, rows: list[dict], title: str, columns: list[str] | None = None) -> Result:
    """`rows` written as CSV (`columns`: the header when there may be no row)."""
    from visionbench.utils.io import write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns or list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())
    return Result(title, path, rows)
