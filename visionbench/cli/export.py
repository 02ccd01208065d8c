"""`visionbench export RUN_DIR --format onnx [--weights best|last] [--out FILE] [--opset 18]`: a run's model as ONNX.

What the file holds, the opsets and the checks before it is written: `engine/export.py`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from visionbench import layout
from visionbench.engine.export import CHECK_BATCH, EXPORTER_OPSET, FORMATS


def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `visionbench train`."),
    format_: str = typer.Option(..., "--format", help=f"Output format: {', '.join(FORMATS)}."),
    weights: str = typer.Option("best", help=f"best ({layout.BEST}) or last ({layout.LAST})."),
    out: Path | None = typer.Option(None, help="Output file (default: RUN_DIR/export/model.onnx)."),
    opset: int = typer.Option(EXPORTER_OPSET, help="ONNX opset version (18 is the exporter's own)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
) -> None:
    """Export a run's model (ONNX), checked against PyTorch with onnxruntime before it is written."""
    from visionbench.engine.calibration import use_temperature
    from visionbench.engine.export import check_onnx, check_out, check_request, to_onnx
    from visionbench.engine.inference import load_run
    from visionbench.errors import UserError
    from visionbench.utils.io import write_bytes

    check_request(format_, opset)
    out = check_out(out, run_dir, overwrite)
    run = load_run(run_dir, weights)
    calibrated = use_temperature(run, run_dir, weights)  # baked into the graph; refused for other weights
    data = to_onnx(run, run_dir, opset, weights)
    diff = check_onnx(run, run_dir, data, opset, out)
    try:
        write_bytes(out, data)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write ({e.strerror or e}); nothing written") from None
    C, H, W = run.info.input_size
    print(
        f"{out}: ONNX opset {opset}, images (batch, {C}, {H}, {W}) -> logits (batch, {run.info.num_outputs}); "
        f"max abs difference to PyTorch {diff:.2e} on {CHECK_BATCH} random images"
        + (f"; {calibrated}, in the graph" if calibrated else "")
    )
