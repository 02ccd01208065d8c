"""`analyze --suite shape_texture`: does a model decide by an object's shape or by its texture?

1. **Cue conflict** (`--cue-conflict DIR [--class-map FILE]`), the protocol of Geirhos et al. (2019), "ImageNet-trained
   CNNs are biased towards texture; increasing shape bias improves accuracy and robustness", ICLR
   (https://arxiv.org/abs/1811.12231). Each image of DIR has the shape of one class and the texture of another, and
   its file name says which, as in the published stimuli: `<shape><n>-<texture><m>.<ext>` (`cat7-elephant1.png`;
   class names of letters and `_`), directly in DIR or in a subfolder of it (the published set has one subfolder per
   shape class). The class map (YAML or JSON) names, for each stimulus class, the run classes that stand for it: a
   class name, an output index, or a list of them (`cat: [tabby, 282]`); without one, each stimulus class is the
   run class of the same name. The images are read and preprocessed as `predict` reads files; the model's
   probabilities are averaged over each stimulus class's run classes (how the authors' code maps ImageNet's 1000
   classes to their 16) and the decision is the stimulus class of the highest mean, a forced choice among the
   mapped classes. Images whose shape and texture are the same class are left out, as in the paper. Shape bias =
   shape decisions / (shape + texture decisions), per shape class and overall; a decision for a third class counts
   in neither.

2. **A proxy for any dataset** (always run, and named a proxy in every output): the task's main metric on the
   split's images, in pixel space,
   - patch-shuffled: cut into g x g patches put back in a random order (one permutation per image, drawn from a
     fixed seed): local texture kept, the global shape destroyed, after the patch-shuffling test of Zhang & Zhu
     (2019), "Interpreting adversarially trained convolutional neural networks", ICML
     (https://arxiv.org/abs/1905.09797). A side that g does not divide keeps its last (side mod g) rows or columns
     in place; g = 1 is the image itself, exactly;
   - low-pass (Gaussian blur, sigma a fraction of the shorter side) and edge maps (the Sobel gradient magnitude of
     the grey image, bright edges on black, scaled to [0, 1] per image; Geirhos et al. test edge maps likewise, with
     Canny's detector): shape kept, texture removed.
   A model that keeps its metric on shuffled patches and loses it on blurred and edge images leans on texture; the
   reverse, on shape. It is a proxy, not the shape bias of (1): every transform also moves the images away from the
   training distribution, which costs accuracy whatever cue the model uses, so compare models with it, never with
   the paper's numbers.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from visionbench.errors import UserError

if TYPE_CHECKING:
    from visionbench.engine.inference import LoadedRun

# `<shape><n>-<texture><m>`: the published stimuli's names (`airplane1-bicycle2.png`)
STIMULUS_NAME = re.compile(r"(?P<shape>[^\W\d]+)\d+-(?P<texture>[^\W\d]+)\d+")
GRIDS = (1, 2, 4, 8)  # patches per side
LOW_PASS_SIGMAS = (0.03, 0.06, 0.12)  # Gaussian sigma, fractions of the shorter side: 0.8, 1.7, 3.4 px at 28 px
SHUFFLE_SEED = 0
OVERALL = "(all)"  # the cue-conflict table's row of every shape class


@dataclasses.dataclass(frozen=True)
class Stimuli:
    """The cue-conflict images to decide: files whose shape and texture classes differ (as stimulus-class
    indices), and the run classes each stimulus class stands for."""

    folder: Path
    files: list[Path]
    shapes: torch.Tensor  # (N,) indices into `classes`
    textures: torch.Tensor  # (N,)
    classes: tuple[str, ...]
    members: tuple[tuple[int, ...], ...]  # run output indices of each class
    same_class: int  # files left out: shape and texture of the same class


def read_stimuli(folder: Path, class_map: Path | None, run: LoadedRun) -> Stimuli:
    """The cue-conflict folder and its class map, checked before any image is decoded.

    Raises:
        UserError: a missing folder or one without image files, a file name not of the published pattern, a class
            map that is not a mapping of stimulus classes to run classes (names or indices) or names an unknown
            one, a stimulus class without a mapping, no image of two different classes, a run that does not
            classify an image into one class.
    """
    if not run.task.one_class_per_image:
        raise UserError(f"--cue-conflict: a forced choice among classes; this is a {run.task.name} run")
    files = _stimulus_files(folder)
    names = [(m["shape"], m["texture"]) if (m := STIMULUS_NAME.fullmatch(p.stem)) else None for p in files]
    for path, pair in zip(files, names, strict=True):
        if pair is None:
            raise UserError(f"{path}: expected a cue-conflict file name <shape><n>-<texture><m> (cat7-elephant1.png)")
    if all(s == t for s, t in names):
        raise UserError(f"{folder}: every image has its shape and texture of the same class; nothing to decide")
    if class_map is None:
        used = dict.fromkeys(c for pair in names for c in pair)
        unknown = next((c for c in used if c not in run.info.class_names), None)
        if unknown is not None:
            raise UserError(f"{folder}: stimulus class {unknown!r} is no class of the run; map it with --class-map")
        members = _class_map({c: c for c in used}, folder, run)
    else:
        from visionbench.config import read_yaml_file

        members = _class_map(read_yaml_file(class_map, "class map"), class_map, run)
    classes = tuple(members)
    for path, pair in zip(files, names, strict=True):
        for cue, name in zip(("shape", "texture"), pair, strict=True):
            if name not in members:
                raise UserError(f"{path}: {cue} class {name!r} has no run classes in {class_map}")
    kept = [(p, classes.index(s), classes.index(t)) for p, (s, t) in zip(files, names, strict=True) if s != t]
    return Stimuli(
        folder=folder,
        files=[p for p, _, _ in kept],
        shapes=torch.tensor([s for _, s, _ in kept]),
        textures=torch.tensor([t for _, _, t in kept]),
        classes=classes,
        members=tuple(members.values()),
        same_class=len(files) - len(kept),
    )


def _stimulus_files(folder: Path) -> list[Path]:
    """The image files directly in `folder` and in its subfolders (not deeper), sorted; hidden files left out."""
    from visionbench.data.folder import IMAGE_EXTENSIONS

    if not folder.is_dir():
        raise UserError(f"--cue-conflict {folder}: no such folder")
    try:
        entries = sorted(folder.iterdir())
        entries += sorted(p for sub in entries if sub.is_dir() and not sub.name.startswith(".") for p in sub.iterdir())
    except OSError as e:
        raise UserError(f"{folder}: cannot list the folder ({e.strerror or e})") from None
    files = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    files = [p for p in files if not p.is_dir()]
    if not files:
        raise UserError(
            f"--cue-conflict {folder}: no image files in it or its subfolders ({', '.join(IMAGE_EXTENSIONS)})"
        )
    return files


def _class_map(raw: Any, source: Any, run: LoadedRun) -> dict[str, tuple[int, ...]]:
    """Each stimulus class's run output indices, from a mapping of names to a run class name, an index, or a list
    of them; a run class may stand for one stimulus class only."""
    names = run.info.class_names
    if not isinstance(raw, dict) or len(raw) < 2 or not all(isinstance(k, str) for k in raw):
        raise UserError(f"{source}: expected a mapping of at least two stimulus class names to run classes")
    owner: dict[int, str] = {}
    members = {}
    for key, value in raw.items():
        values = value if isinstance(value, list) else [value]
        if not values:
            raise UserError(f"{source}: {key!r}: expected a run class name, an output index or a list of them")
        indices = []
        for v in values:
            if isinstance(v, str) and v in names:
                indices.append(names.index(v))
            elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(names):
                indices.append(v)
            else:
                shown = ", ".join(names[:10]) + (f" ... ({len(names)})" if len(names) > 10 else "")
                raise UserError(
                    f"{source}: {key!r}: no run class {v!r}; the run's classes are {shown} (or 0..{len(names) - 1})"
                )
        for i in indices:
            if owner.setdefault(i, key) != key:
                raise UserError(f"{source}: run class {names[i]!r} stands for both {owner[i]!r} and {key!r}")
        members[key] = tuple(dict.fromkeys(indices))
    return members


@torch.inference_mode()
def decide_stimuli(run: LoadedRun, stimuli: Stimuli) -> torch.Tensor:
    """(N,) the stimulus class each image is decided as: the highest mean probability over a class's run classes.

    Raises:
        UserError: an unreadable image, or an output that is not finite (naming the file).
    """
    from visionbench.engine.inference import predicted_batches

    average = torch.zeros(run.info.num_outputs, len(stimuli.classes))  # (K, S): probabilities -> class means
    for s, indices in enumerate(stimuli.members):
        average[list(indices), s] = 1.0 / len(indices)
    decisions = []
    for _, outputs in predicted_batches(run, stimuli.files):
        decisions.append((outputs.float() @ average).argmax(1))
    return torch.cat(decisions)


def shape_bias(stimuli: Stimuli, decisions: torch.Tensor) -> list[dict]:
    """The overall row (`OVERALL`) and one per shape class that has images: counts of shape, texture and other
    decisions and the shape bias (None when no decision was for either cue)."""
    shape_hit, texture_hit = decisions == stimuli.shapes, decisions == stimuli.textures
    groups = [(OVERALL, torch.ones_like(shape_hit))]
    groups += [(name, stimuli.shapes == c) for c, name in enumerate(stimuli.classes) if (stimuli.shapes == c).any()]
    rows = []
    for name, sel in groups:
        shape, texture, n = int(shape_hit[sel].sum()), int(texture_hit[sel].sum()), int(sel.sum())
        rows.append(
            {
                "shape_class": name,
                "images": n,
                "shape_decisions": shape,
                "texture_decisions": texture,
                "other_decisions": n - shape - texture,
                "shape_bias": shape / (shape + texture) if shape + texture else None,
            }
        )
    return rows


def decision_rows(stimuli: Stimuli, decisions: torch.Tensor) -> list[dict]:
    """One row per image: its file (relative to the folder), classes, decision and the cue it follows."""
    rows = []
    for path, s, t, d in zip(stimuli.files, stimuli.shapes, stimuli.textures, decisions.tolist(), strict=True):
        cue = "shape" if d == s else "texture" if d == t else "other"
        names = {"shape": stimuli.classes[s], "texture": stimuli.classes[t], "decision": stimuli.classes[d]}
        rows.append({"file": path.relative_to(stimuli.folder).as_posix(), **names, "cue": cue})
    return rows


def patch_shuffle(pixels: torch.Tensor, grid: int, generator: torch.Generator) -> torch.Tensor:
    """(B, C, H, W) images, each cut into `grid` x `grid` patches put back in an order of its own (the last
    H mod grid rows and W mod grid columns stay in place): a permutation of each image's pixels.

    Raises:
        UserError: a grid finer than the image.
    """
    B, C, H, W = pixels.shape
    ph, pw = H // grid, W // grid  # patch size
    if not ph or not pw:
        raise UserError(f"patch shuffling: a {grid} x {grid} grid does not fit {H} x {W} images")
    region = pixels[..., : ph * grid, : pw * grid]
    patches = region.reshape(B, C, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5).reshape(B, grid * grid, C, ph, pw)
    order = torch.rand(B, grid * grid, generator=generator).argsort(1)  # (B, g*g) a permutation per image
    patches = patches[torch.arange(B)[:, None], order]
    region = patches.reshape(B, grid, grid, C, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(B, C, ph * grid, pw * grid)
    out = pixels.clone()
    out[..., : ph * grid, : pw * grid] = region
    return out


def low_pass(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian blur of `sigma` pixels (kernel +- 3 sigma, reflected borders)."""
    from torchvision.transforms.v2 import functional as TF

    size = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(pixels, [size, size], [sigma, sigma])


def edge_map(pixels: torch.Tensor) -> torch.Tensor:
    """The Sobel gradient magnitude of each image's grey level (channel mean; replicated borders, so the frame is
    no edge), scaled to [0, 1] per image and repeated over the channels."""
    B, C, H, W = pixels.shape
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel_x, sobel_x.T])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    grey = F.pad(pixels.mean(1, keepdim=True), (1, 1, 1, 1), mode="replicate")
    magnitude = F.conv2d(grey, kernels).square().sum(1, keepdim=True).sqrt()  # (B, 1, H, W)
    magnitude = magnitude / magnitude.amax((2, 3), keepdim=True).clamp_min(1e-12)
    return magnitude.expand(B, C, H, W).contiguous()


def proxy(ev, pixels: torch.Tensor, targets: torch.Tensor) -> list[dict]:
    """The proxy's table: the metric (`ev.score`) on the clean, patch-shuffled, low-pass and edge images, with
    the cue each keeps and the transform's level (patches per side, sigma in pixels)."""
    H, W = pixels.shape[-2:]
    generator = torch.Generator().manual_seed(SHUFFLE_SEED)

    def row(probe: str, kept: str, level: float, unit: str, images: torch.Tensor) -> dict:
        return {"probe": probe, "kept": kept, "level": level, "unit": unit, "metric": ev.score(images, targets)}

    rows = [row("clean", "shape and texture", 0, "", pixels)]
    for g in (g for g in GRIDS if g <= min(H, W)):
        rows.append(row("patch_shuffle", "texture", g, "patches per side", patch_shuffle(pixels, g, generator)))
    for fraction in LOW_PASS_SIGMAS:
        sigma = round(fraction * min(H, W), 3)
        rows.append(row("low_pass", "shape", sigma, "sigma px", low_pass(pixels, sigma).clamp(0, 1)))
    rows.append(row("edge_map", "shape", 0, "", edge_map(pixels)))
    return rows


def plot_proxy(path: Path, rows: list[dict], metric: str) -> Path:
    """The proxy's figure: the metric against the patch grid (texture kept) and against the blur (shape kept),
    the clean images' metric dashed and the edge maps' dotted."""
    from visionbench.report.plots import _figure, _save

    fig, axes = _figure(2)
    clean = next(r["metric"] for r in rows if r["probe"] == "clean")
    edges = next(r["metric"] for r in rows if r["probe"] == "edge_map")
    for ax, probe, xlabel in zip(
        axes[0],
        ("patch_shuffle", "low_pass"),
        ("patches per side (texture kept)", "blur sigma, px (shape kept)"),
        strict=True,
    ):
        points = [(r["level"], r["metric"]) for r in rows if r["probe"] == probe]
        ax.plot(*zip(*points, strict=True), marker="o", label=probe)
        ax.axhline(clean, color="grey", linestyle="--", label="clean")
        if probe == "low_pass":
            ax.axhline(edges, color="tab:red", linestyle=":", label="edge map (shape kept)")
        ax.set(xlabel=xlabel, ylabel=metric)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    grids = [r["level"] for r in rows if r["probe"] == "patch_shuffle"]
    axes[0, 0].set_xscale("log", base=2)
    axes[0, 0].set_xticks(grids, [str(g) for g in grids])
    axes[0, 0].minorticks_off()
    low = min(r["metric"] for r in rows)
    high = max(r["metric"] for r in rows)
    pad = 0.05 * (high - low) or 0.01
    for ax in axes[0]:
        ax.set_ylim(low - pad, high + pad)  # one scale for both panels: the two cues compare at a glance
    fig.suptitle("shape/texture PROXY (not the cue-conflict shape bias)", fontsize=9)
    return _save(fig, path)


def plot_shape_bias(path: Path, rows: list[dict]) -> Path:
    """The cue-conflict figure: each shape class's shape bias as a bar (0: texture only, 1: shape only), the
    overall one dashed."""
    from visionbench.report.plots import _pyplot, _save

    overall, per_class = rows[0], rows[1:]
    fig, ax = _pyplot().subplots(figsize=(6, min(max(2.5, 0.3 * len(per_class) + 1.2), 30.0)))
    values = [r["shape_bias"] for r in per_class]
    ax.barh(range(len(per_class)), [v if v is not None else 0.0 for v in values], color="tab:blue")
    for i, v in enumerate(values):
        ax.text(0.01 if v is None else v + 0.01, i, "n/a" if v is None else f"{v:.2f}", va="center", fontsize=8)
    ax.set_yticks(range(len(per_class)), [r["shape_class"] for r in per_class], fontsize=8)
    ax.invert_yaxis()
    bias = overall["shape_bias"]
    if bias is not None:
        ax.axvline(bias, color="black", linestyle="--", linewidth=1)
    shown = "n/a" if bias is None else f"{bias:.3f}"
    ax.set(xlim=(0, 1.15), xlabel="fraction of shape decisions among shape and texture decisions")
    ax.set_title(
        f"cue-conflict shape bias (Geirhos et al. 2019): {shown} overall (dashed), {overall['images']} images",
        fontsize=9,
    )
    return _save(fig, path)
