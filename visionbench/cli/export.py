"""`visionbench export RUN_DIR --format onnx [--weights best|last] [--out FILE] [--opset 18]`: a run's model as ONNX.

The graph takes `images` (batch, C, H, W), float32, already resized and standardised as `visionbench predict` does
(the mean, std, class names and regression standardisation are in the file's `visionbench` metadata entry, JSON),
and returns `logits` (batch, num_outputs) before the task's softmax, sigmoid or de-standardisation. The batch axis
is dynamic.

The exporter is torch.export-based (`torch.onnx.export(..., dynamo=True)`, PyTorch's default since 2.9, which
needs onnxscript): the TorchScript one is deprecated, and it fails on models the new one exports (VGG's adaptive
pooling to 7x7 of a 1x1 map at 32x32 input). It writes opset 18 (`EXPORTER_OPSET`, the opset its operator library
is written in), hence the default; another `--opset` from 7 (onnxruntime's lowest) to the installed onnx's highest
is converted by onnx's version converter, which works when the model's operators have adapters (small_cnn: down
to 15; below, "No Adapter From Version 15 for Shape"). An opset that cannot be honoured is a one-line error, and
the written model's opset_import is checked against the request. (torch's own conversion, asked with
opset_version, keeps opset 18 when it fails, logging a traceback.) Before anything is written, onnxruntime runs
the model on a random batch of another size than the exported example, and its outputs must match PyTorch's
within rtol 1e-3, atol 1e-4 (timm's tolerance for stored outputs).

The file is written atomically (temp file, rename), so a failure leaves nothing half-written. The default,
RUN_DIR/export/model.onnx, is export's own file and is replaced by the next export; an existing `--out` file is
replaced only with `--overwrite`, a folder never, and no `--out` may lie inside a run directory (a run's
checkpoints, its config) other than under the exported run's export/ folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import typer

from visionbench import layout
from visionbench.errors import UserError, first_line

FORMATS = ("onnx",)
INSTALL_HINT = "pip install 'visionbench[export]'"
RTOL, ATOL = 1e-3, 1e-4
EXAMPLE_BATCH, CHECK_BATCH = 2, 3  # different sizes, so that the check exercises the dynamic batch axis
EXPORTER_OPSET = 18  # torch.onnx's TORCHLIB_OPSET: what the dynamo exporter writes without converting
MIN_OPSET = 7  # onnxruntime runs opsets from 7 on (torch.onnx's ONNX_MIN_OPSET too)


def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `visionbench train`."),
    format_: str = typer.Option(..., "--format", help=f"Output format: {', '.join(FORMATS)}."),
    weights: str = typer.Option("best", help=f"best ({layout.BEST}) or last ({layout.LAST})."),
    out: Path | None = typer.Option(None, help="Output file (default: RUN_DIR/export/model.onnx)."),
    opset: int = typer.Option(EXPORTER_OPSET, help="ONNX opset version (18 is the exporter's own)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
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

    highest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= highest:
        raise UserError(
            f"--opset {opset}: expected an ONNX opset from {MIN_OPSET} to {highest} (the exporter writes "
            f"{EXPORTER_OPSET}; onnx {onnx.__version__} converts to the others when the model's operators allow)"
        )
    default = run_dir / layout.EXPORT / "model.onnx"
    out = check_out(out if out is not None else default, run_dir, overwrite or out is None)
    run = load_run(run_dir, weights)
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
            opset_version=EXPORTER_OPSET,
            verbose=False,
        )
        proto = program.model_proto
        onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001  (an operator the exporter cannot take: one line, not a trace)
        raise UserError(f"{run_dir}: {run.cfg.model.name} could not be exported to ONNX ({first_line(e)})") from None
    if opset != EXPORTER_OPSET:
        try:
            proto = onnx.version_converter.convert_version(proto, opset)
            onnx.checker.check_model(proto)
        except Exception as e:  # noqa: BLE001  (the converter asserts in C++: a RuntimeError naming the operator)
            raise UserError(
                f"--opset {opset}: {run.cfg.model.name} cannot be converted from opset {EXPORTER_OPSET}, the one the "
                f"exporter writes ({_reason(e)}); use --opset {EXPORTER_OPSET}, the exporter's own"
            ) from None
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:  # the last guard: never a file of another opset than asked for
        raise UserError(f"--opset {opset}: the converted model declares opset {written}; not written")
    metadata = {
        "model": run.cfg.model.name,
        "task": run.kind,
        "data_info": vars(run.info),
        "task_stats": run.task.stats(),
        "weights": weights,
    }
    onnx.helper.set_model_props(proto, {"visionbench": json.dumps(metadata, allow_nan=False)})
    data = proto.SerializeToString()

    images = torch.randn(CHECK_BATCH, C, H, W, generator=generator)
    try:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        (got,) = session.run(["logits"], {"images": images.numpy()})
    except Exception as e:  # noqa: BLE001  (onnxruntime's own error types)
        raise UserError(f"--opset {opset}: onnxruntime cannot run the exported model ({first_line(e)})") from None
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
    try:
        write_bytes(out, data)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write ({e.strerror or e}); nothing written") from None
    print(
        f"{out}: ONNX opset {opset}, images (batch, {C}, {H}, {W}) -> logits (batch, {run.info.num_outputs}); "
        f"max abs difference to PyTorch {diff:.2e} on {CHECK_BATCH} random images"
    )


def _reason(e: Exception) -> str:
    """The converter's assertion without its C++ source location ('/project/onnx/...h:66: adapter_lookup: ...')."""
    text = first_line(e, 400)
    return (text.split("failed: ", 1)[-1] if "Assertion" in text else text).replace("$", "")


def check_out(out: Path, run_dir: Path, overwrite: bool) -> Path:
    """`out` if export may write it: not a folder, not an existing file unless `overwrite`, not inside a run
    directory except under `run_dir`'s export/ folder. A link as the last component is replaced, never followed.

    Raises:
        UserError: naming `--out` and why.
    """

    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; expected a file path (e.g. {out / 'model.onnx'})")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise UserError(f"--out {out}: exists; pass --overwrite to replace it")
    inside = layout.enclosing_run_dir(out)
    own = run_dir.resolve() / layout.EXPORT
    if inside is not None and own not in (out.parent.resolve() / out.name).parents:
        raise UserError(
            f"--out {out}: inside the run directory {inside}; export writes into a run directory only under its own "
            f"{layout.EXPORT}/ folder (the default)"
        )
    return out
