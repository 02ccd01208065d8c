"""`explain`: pick images of a split (correct and wrong predictions, or per class), attribute them with one method,
and save image grids with the maps overlaid as PNG in `<run>/explain/<method>-<split>/`, which the run's report
shows.

The run's task picks the targets (`Task.explain_targets`): the predicted class (default) or the true one for
classification; every label predicted (over the task's threshold) or true for multi-label (one panel per image and
label); output 0, the regressed value itself, for regression.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from visionbench import layout
from visionbench.analysis.attribution import attribute, to_maps
from visionbench.errors import UserError
from visionbench.utils.io import write_json

if TYPE_CHECKING:
    from visionbench.tasks import Task


@dataclasses.dataclass
class Panel:
    """One image of a grid: its index in the split, the attributed output and a caption."""

    index: int
    target: int
    caption: str


def wanted_classes(classes: str | None, names: tuple[str, ...]) -> list[str] | None:
    """`--classes` (comma-separated class names) as a list, or None for every class.

    Raises:
        UserError: a name that is not one of `names`.
    """
    wanted = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    unknown = [c for c in wanted or () if c not in names]
    if unknown:
        raise UserError(f"--classes: no class {unknown[0]!r}; the classes are {', '.join(names)}")
    return wanted


def select(
    task: Task, outputs: torch.Tensor, targets: torch.Tensor, n: int, classes: list[str] | None, target: str
) -> dict[str, list[Panel]]:
    """Groups of at most `n` panels, as the task picks them from a split's activated outputs and targets
    (`Task.explain_targets`): `correct` and `wrong` predictions or one group per class in `classes`
    (classification), `labels` (multi-label), `samples` (regression). `target`: `predicted` or `true`."""
    groups = task.explain_targets(outputs, targets, n, classes, predicted=target == "predicted")
    return {name: [Panel(*panel) for panel in panels] for name, panels in groups.items()}


def explain_groups(
    model, images: torch.Tensor, groups: dict[str, list[Panel]], method: str, batch_size: int
) -> dict[str, torch.Tensor]:
    """(n, H, W) maps in [0, 1] for each group, attributed in internal batches."""
    out = {}
    for name, panels in groups.items():
        if not panels:
            continue
        idx = torch.tensor([p.index for p in panels])
        tgt = torch.tensor([p.target for p in panels])
        out[name] = to_maps(attribute(model, images[idx], tgt, method, batch_size))
    return out


def _file_stems(names: list[str]) -> dict[str, str]:
    """A file name for each group: class names are data (`a/b`, `..`, `$x`), so only [A-Za-z0-9_.-] is kept, no
    leading dot, at most 100 characters, and a `-N` suffix when two names come out alike."""
    stems: dict[str, str] = {}
    for name in names:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:100].lstrip(".") or "group"
        base, k = stem, 1
        while stem in stems.values():
            k += 1
            stem = f"{base}-{k}"
        stems[name] = stem
    return stems


def save_grids(
    out_dir: Path,
    display: torch.Tensor,
    groups: dict[str, list[Panel]],
    maps: dict[str, torch.Tensor],
    title: str,
) -> list[Path]:
    """One PNG per group: each image above its overlay (map as a heat map at 50 % over the grey image)."""
    from visionbench.report.plots import _pyplot, _save

    plt = _pyplot()
    paths = []
    stems = _file_stems(list(groups))
    for name, panels in groups.items():
        if name not in maps:
            continue
        cols = min(8, len(panels))
        rows = -(-len(panels) // cols)
        fig, axes = plt.subplots(2 * rows, cols, figsize=(1.9 * cols, 3.9 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for k, (p, m) in enumerate(zip(panels, maps[name], strict=True)):
            r, c = divmod(k, cols)
            img = display[p.index]
            shown = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
            cmap = "gray" if img.shape[0] == 1 else None
            axes[2 * r, c].imshow(shown.numpy(), cmap=cmap)
            axes[2 * r, c].set_title(p.caption, fontsize=6)
            axes[2 * r + 1, c].imshow(shown.numpy(), cmap=cmap)
            axes[2 * r + 1, c].imshow(m.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        fig.suptitle(f"{title}: {name}", fontsize=9)
        paths.append(_save(fig, out_dir / f"{stems[name]}.png", svg=False))
    write_json(
        out_dir / layout.EXPLAIN_PANELS,
        {name: [dataclasses.asdict(p) for p in panels] for name, panels in groups.items()},
    )
    return paths


def explain_run(
    run_dir: Path,
    method: str,
    n: int = 16,
    split: str = "test",
    classes: str | None = None,
    target: str = "predicted",
    weights: str = "best",
    batch_size: int = 32,
    scan: int = 2000,
) -> tuple[dict[str, list[Panel]], list[Path]]:
    """`visionbench explain` (and a study's `explain` figure): attribute `n` images of each group of a run's split
    with `method` and save the grids in `<run>/explain/<method>-<split>/`.

    Returns:
        The groups (name: panels) and the PNG grids written.

    Raises:
        UserError: a bad target, split or class name, a method the model cannot take, a run that cannot be loaded.
    """
    from visionbench.analysis.attribution import check_method
    from visionbench.engine.inference import check_split, display_images, load_run, split_images, split_outputs

    if target not in ("predicted", "true"):
        raise UserError(f"--target: expected predicted or true, got {target!r}")
    check_split(split)
    run = load_run(run_dir, weights)
    check_method(method, run.model, run.cfg.model.name)
    wanted = wanted_classes(classes, run.info.class_names)  # before any data is read
    images, targets = split_images(run, split, scan)
    _, outputs = split_outputs(run, images, f"{run_dir}: {split}")
    groups = select(run.task, outputs, targets, n, wanted, target)
    maps = explain_groups(run.model, images, groups, method, batch_size)
    title = f"{method} ({target} targets), {split}"
    out_dir = run_dir / layout.explain_folder(method, split)
    return groups, save_grids(out_dir, display_images(run.info, images), groups, maps, title)
