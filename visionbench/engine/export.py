"""A run's model as ONNX (`visionbench export`), checked against PyTorch with onnxruntime before it is written.

The graph takes `images` (batch, C, H, W), float32, already resized and standardised as `visionbench predict` does
(the mean, std, class names, resize settings and regression standardisation are in the file's `visionbench` metadata
entry, JSON), and returns `logits` (batch, num_outputs) before the task's softmax, sigmoid or de-standardisation.
The batch axis is dynamic. A run calibrated by `visionbench eval --calibrate` is exported with the division by its
temperature baked into the graph (engine/calibration.py's `Temperature` after the model): its `logits` are already
divided, and the metadata's `temperature_applied` says by what (null: not calibrated), so that no consumer divides
twice.

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
from pathlib import Path
from typing import TYPE_CHECKING

from visionbench import layout
from visionbench.errors import UserError, first_line

if TYPE_CHECKING:
    import torch

    from visionbench.engine.inference import LoadedRun

FORMATS = ("onnx",)
INSTALL_HINT = "pip install 'visionbench[export]'"
RTOL, ATOL = 1e-3, 1e-4
EXAMPLE_BATCH, CHECK_BATCH = 2, 3  # different sizes, so that the check exercises the dynamic batch axis
EXPORTER_OPSET = 18  # torch.onnx's TORCHLIB_OPSET: what the dynamo exporter writes without converting
MIN_OPSET = 7  # onnxruntime runs opsets from 7 on (torch.onnx's ONNX_MIN_OPSET too)
DEFAULT_NAME = "model.onnx"  # under the run's export/ folder


class OutputsDiffer(UserError):
    """onnxruntime's outputs differ from PyTorch's beyond the tolerance. Exit status 1: not the input's fault."""

    exit_code = 1


def check_request(format_: str, opset: int) -> None:
    """The format is supported, the ONNX packages are installed, and the installed onnx knows `opset`.

    Raises:
        UserError: naming the option, or the install hint.
    """
    if format_ not in FORMATS:
        raise UserError(f"--format: {format_!r} is not supported; supported formats: {', '.join(FORMATS)}")
    try:
        import onnx
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx's exporter imports it; fail here with the hint instead)
    except ImportError:
        raise UserError(f"ONNX export needs onnx, onnxruntime and onnxscript: {INSTALL_HINT}") from None
    highest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= highest:
        raise UserError(
            f"--opset {opset}: expected an ONNX opset from {MIN_OPSET} to {highest} (the exporter writes "
            f"{EXPORTER_OPSET}; onnx {onnx.__version__} converts to the others when the model's operators allow)"
        )


def check_out(out: Path | None, run_dir: Path, overwrite: bool) -> Path:
    """The file export may write: `out`, or RUN_DIR/export/model.onnx (always replaceable) when None. Not a
    folder, not an existing file unless `overwrite`, not inside a run directory except under `run_dir`'s export/
    folder. A link as the last component is replaced, never followed.

    Raises:
        UserError: naming `--out` and why.
    """
    if out is None:
        out, overwrite = run_dir / layout.EXPORT / DEFAULT_NAME, True
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; expected a file path (e.g. {out / DEFAULT_NAME})")
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


def to_onnx(run: LoadedRun, run_dir: Path, opset: int, weights: str) -> bytes:
    """The run's model as a serialised ONNX model of `opset`, with the `visionbench` metadata entry.

    Raises:
        UserError: an operator the exporter cannot take, or an opset the model cannot be converted to.
    """
    import onnx
    import torch  # here: `visionbench --help` and every other command import this module's names

    example, _ = _random_batches(run)
    try:
        program = torch.onnx.export(
            exported_module(run),
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
        "task": run.task.name,
        "data_info": vars(run.info),
        # how predict resizes a file to data_info's input size (stream.resize_ops): timm's crop_pct view when set
        "resize": {"interpolation": run.cfg.data.interpolation, "eval_crop_pct": run.cfg.data.eval_crop_pct},
        "task_stats": run.task.stats(),
        "weights": weights,
        "temperature_applied": run.temperature,  # the graph's logits are already divided by it
    }
    onnx.helper.set_model_props(proto, {"visionbench": json.dumps(metadata, allow_nan=False)})
    return proto.SerializeToString()


def exported_module(run: LoadedRun) -> torch.nn.Module:
    """The module export writes: the run's model, followed by the division by its temperature when it has one."""
    import torch

    if run.temperature is None:
        return run.model
    from visionbench.engine.calibration import Temperature

    return torch.nn.Sequential(run.model, Temperature(run.temperature)).eval()


def _random_batches(run: LoadedRun) -> tuple[torch.Tensor, torch.Tensor]:
    """The exported example and the checked images: standard normal (standardised units), one seeded draw."""
    import torch

    C, H, W = run.info.input_size
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(EXAMPLE_BATCH, C, H, W, generator=generator)
    return example, torch.randn(CHECK_BATCH, C, H, W, generator=generator)


def _reason(e: Exception) -> str:
    """The converter's assertion without its C++ source location ('/project/onnx/...h:66: adapter_lookup: ...')."""
    text = first_line(e, 400)
    return (text.split("failed: ", 1)[-1] if "Assertion" in text else text).replace("$", "")


def check_onnx(run: LoadedRun, run_dir: Path, data: bytes, opset: int, out: Path) -> float:
    """onnxruntime runs the serialised model on CHECK_BATCH random images; returns the largest absolute difference
    to PyTorch's outputs.

    Raises:
        UserError: onnxruntime cannot run the model.
        OutputsDiffer: the outputs differ beyond RTOL, ATOL (naming `out`, which is then not written).
    """
    import onnxruntime
    import torch

    _, images = _random_batches(run)
    try:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        (got,) = session.run(["logits"], {"images": images.numpy()})
    except Exception as e:  # noqa: BLE001  (onnxruntime's own error types)
        raise UserError(f"--opset {opset}: onnxruntime cannot run the exported model ({first_line(e)})") from None
    with torch.inference_mode():
        expected = exported_module(run)(images)
    got = torch.from_numpy(got)
    same_shape = got.shape == expected.shape
    diff = (got - expected).abs().max().item() if same_shape else float("inf")
    if not (same_shape and torch.allclose(got, expected, rtol=RTOL, atol=ATOL)):
        raise OutputsDiffer(
            f"{run_dir}: onnxruntime's outputs differ from PyTorch's by up to {diff:.3g} "
            f"(tolerance rtol {RTOL:g}, atol {ATOL:g}); {out} not written"
        )
    return diff
