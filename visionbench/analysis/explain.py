"""`explain`: pick images of a split (correct and wrong predictions, or per class), attribute them with one method,
and save image grids with the maps overlaid as PNG in `<run>/explain/<method>-<split>/`, which the run's report
shows.

Targets: the predicted class (default) or the true one for classification; every label predicted or true for
multi-label (one panel per image and label); output 0, the regressed value itself, for regression.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from visionbench.analysis.attribution import attribute, to_maps
from visionbench.errors import UserError
from visionbench.utils.io import write_json


@dataclasses.dataclass
class Panel:
    """One image of a grid: its index in the split, the attributed output and a caption."""

    index: int
    target: int
    caption: str


def select(
    kind: str,
    preds: torch.Tensor,
    targets: torch.Tensor,
    class_names: tuple[str, ...],
    n: int,
    classes: list[str] | None,
    target: str,
) -> dict[str, list[Panel]]:
    """Groups of panels: `correct` and `wrong` (classification), or one group per class in `classes`; `labels`
    (multi-label); `samples` (regression)."""
    names = list(class_names)
    if classes:
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise UserError(f"--classes: no class {unknown[0]!r}; the classes are {', '.join(names)}")
    if kind == "regression":
        panels = []
        for i in range(min(n, len(preds))):
            true, pred = float(targets[i].reshape(-1)[0]), float(preds[i].reshape(-1)[0])
            panels.append(Panel(i, 0, f"#{i} true {true:.3g}, pred {pred:.3g}"))
        return {"samples": panels}
    if kind == "multilabel":
        panels = []
        for i in range(len(preds)):
            labels = (preds[i] > 0) | (targets[i] > 0.5) if target == "predicted" else targets[i] > 0.5
            for j in labels.nonzero().flatten().tolist():
                if classes and names[j] not in classes:
                    continue
                mark = "true" if targets[i, j] > 0.5 else "false"
                panels.append(Panel(i, j, f"#{i} {names[j]} ({mark} label, p={float(torch.sigmoid(preds[i, j])):.2f})"))
            if len(panels) >= n:
                break
        return {"labels": panels[:n]}
    pred, true = preds.argmax(1), targets.long()

    def panel(i: int) -> Panel:
        t = int(pred[i] if target == "predicted" else true[i])
        return Panel(i, t, f"#{i} true {names[true[i]]}, pred {names[pred[i]]}")

    if classes:
        return {
            f"class-{c}": [panel(i) for i in (true == names.index(c)).nonzero().flatten()[:n].tolist()] for c in classes
        }
    right = (pred == true).nonzero().flatten()[:n].tolist()
    wrong = (pred != true).nonzero().flatten()[:n].tolist()
    return {"correct": [panel(i) for i in right], "wrong": [panel(i) for i in wrong]}


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
        paths.append(_save(fig, out_dir / f"{stems[name]}.png"))
    write_json(
        out_dir / "panels.json",
        {name: [dataclasses.asdict(p) for p in panels] for name, panels in groups.items()},
    )
    return paths
