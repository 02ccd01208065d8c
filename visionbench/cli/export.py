"""`visionbench export RUN_DIR --format onnx [--weights best|last] [--out FILE] [--opset 18]`: a run's model as ONNX.

The graph takes `images` (batch, C, H, W), float32, already resized and standardised as `visionbench predict` does
(the mean, std, class names and regression standardisation are in the file's `visionbench` metadata entry, JSON),
and returns `logits` (batch, num_outputs) before the task's softmax, sigmoid or de-standardisation. The batch axis
is dynamic.

The exporter is torch.export-based (`torch.onnx.export(..., dynamo=True)`, PyTorch's default since 2.9, which
needs onnxscript): the TorchScript one is deprecated, and it fails on models the new one exports (VGG's adaptive
pooling to 7x7 of a 1x1 map at 32x32 input). Its lowest implemented opset is 18, hence the default; a lower
`--opset` is converted down by onnx's version converter. Before anything is written, onnxruntime runs the model
on a random batch of another size than the exported example, and its outputs must match PyTorch's within
rtol 1e-3, atol 1e-4 (timm's tolerance for stored outputs); the file is then written atomically, in one piece.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import typer

from visionbench.errors import UserError, first_line

FORMATS = ("onnx",)
INSTALL_HINT = "pip install 'visionbench[export]'"
RTOL, ATOL = 1e-3, 1e-4
EXAMPLE_BATCH, CHECK_BATCH = 2, 3  # different sizes, so that the check exercises the dynamic batch axis


def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `visionbench train`."),
    format_: str = typer.Option(..., "--format", help=f"Output format: {', '.join(FORMATS)}."),
    weights: str = typer.Option("best", help="best (checkpoints/best.safetensors) or last (checkpoints/last)."),
    out: Path | None = typer.Option(None, help="Output file (default: RUN_DIR/export/model.onnx)."),
    opset: int = typer.Option(18, help="ONNX opset version."),
) -> None:
    """Export a run's model (ONNX), checked against PyTorch with onnxruntime before it is written."""
    if format_ not in FORMATS:
        raise UserError(f"--format: {format_!r} is not supported; supported formats: {', '.join(FORMATS)}")
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's exporter imports it; fail here with the hint instead)
    except ImportError:
        raise UserError(f"ONNX export needs onnx, onnxruntime and onnxscript: {INSTALL_HINT}") from None
    from visionbench.cli.predict import load_run
    from visionbench.utils.io import write_bytes

    run = load_run(run_dir, weights)
    out = out if out is not None else run_dir / "export" / "model.onnx"
    C, H, W = run.info.input_size
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(EXAMPLE_BATCH, C, H, W, generator=generator)
    try:
        program = torch.onnx.export(
            run.model,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            verbose=False,
        )
        proto = program.model_proto
        onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001  (an operator or opset the exporter cannot take: one line, not a trace)
        raise UserError(f"{run_dir}: {run.cfg.model.name} could not be exported to ONNX ({first_line(e)})") from None
    metadata = {
        "model": run.cfg.model.name,
        "task": run.kind,
        "data_info": vars(run.info),
        "task_stats": run.task.stats(),
        "weights": weights,
    }
    onnx.helper.set_model_props(proto, {"visionbench": json.dumps(metadata)})
    data = proto.SerializeToString()
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)  # after conversion

    images = torch.randn(CHECK_BATCH, C, H, W, generator=generator)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"images": images.numpy()})
    with torch.inference_mode():
        expected = run.model(images)
    got = torch.from_numpy(got)
    same_shape = got.shape == expected.shape
    diff = (got - expected).abs().max().item() if same_shape else float("inf")
    if not (same_shape and torch.allclose(got, expected, rtol=RTOL, atol=ATOL)):
        print(
            f"error: {run_dir}: onnxruntime's outputs differ from PyTorch's by up to {diff:.3g} "
            f"(tolerance rtol {RTOL:g}, atol {ATOL:g}); {out} not written",
            file=sys.stderr,
        )
        raise typer.Exit(1)
    write_bytes(out, data)
    print(
        f"{out}: ONNX opset {opset}, images (batch, {C}, {H}, {W}) -> logits (batch, {run.info.num_outputs}); "
        f"max abs difference to PyTorch {diff:.2e} on {CHECK_BATCH} random images"
    )
