"""Run configuration: pydantic v2 models, YAML loading, dotted `--set` overrides, dumping.

A config is a YAML mapping with the sections of `RunConfig`. Every section is frozen, strict and forbids unknown
keys, so a typo is an error naming the file, the dotted key and the closest valid keys (LightningCLI #12303 is
the complaint this avoids). Defaults live here and nowhere else: the CLI declares none of its own.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from visionbench.errors import UserError, first_line
from visionbench.utils.bounded import CONFIG_BYTES, read_text

# Limits of every YAML document we read (config files, `--set` values, search spaces, a run's config.yaml). A config
# has a few hundred nodes and nests 6 deep; the limits only stop what no config needs: an alias bomb (a 700-byte
# "billion laughs" that expands to 10^9 nodes as soon as anything walks it, PyYAML shares the aliased objects but
# pydantic, repr and json do not), a recursive anchor (`&a [*a]`) and nesting that would exhaust Python's stack.
MAX_YAML_NODES = 100_000  # nodes with every alias counted as a copy of what it names
MAX_YAML_DEPTH = 50  # nesting levels, through aliases too


class YAMLLimitError(yaml.MarkedYAMLError):
    """A YAML document refused for its size once aliases are expanded, a recursive anchor, or its depth."""


class _Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader (no tags, no objects) with YAML 1.2 floats (`1e-3` is a number, not a string), bounded
    by MAX_YAML_NODES and MAX_YAML_DEPTH, and with a value that cannot be built (`2001-13-45` read as a date, an int
    of 5,000 digits, `!!bool maybe`) reported as a YAML error at its line rather than escaping as a ValueError or
    KeyError."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        # The composer recurses once per level (two frames): refuse before Python's stack runs out.
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise YAMLLimitError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _check_expansion(node)
        return node

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as e:  # noqa: BLE001  (any failure building a foreign value means a bad value)
            value = f" {_short(node.value)}" if isinstance(node, yaml.ScalarNode) else ""
            problem = f"cannot read the value{value} as {node.tag.rsplit(':', 1)[-1]} ({first_line(e, 80)})"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    """An int within 64 bits: a config int beyond that (`0x` and 4,400 hex digits is one) is nothing any setting or
    library can use, and repr or YAML dumping of it fails past 4,300 digits."""
    value = yaml.SafeLoader.construct_yaml_int(loader, node)
    if not -(2**63) <= value < 2**63:
        raise yaml.constructor.ConstructorError(
            None, None, f"the integer {_short(value)} is beyond the 64-bit range", node.start_mark
        )
    return value


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _check_expansion(root: yaml.Node) -> None:
    """Count the nodes and levels of a composed document as if every alias were a copy, without expanding it:
    sizes are summed over the node graph (aliases make it a DAG, a recursive anchor a cycle) bottom-up."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, levels)
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _children(node)
        if children_done:
            on_path.discard(key)
            size = 1 + sum(done[id(c)][0] for c in children)
            depth = 1 + max((done[id(c)][1] for c in children), default=0)
            if size > MAX_YAML_NODES:
                raise _refused(f"aliases expand to more than {MAX_YAML_NODES:,} nodes (an alias bomb?)", node)
            if depth > MAX_YAML_DEPTH:
                raise _refused(f"aliases nest deeper than {MAX_YAML_DEPTH} levels", node)
            done[key] = (size, depth)
        elif key not in done:
            if key in on_path:
                raise _refused("an alias refers to its own anchor (a recursive value)", node)
            on_path.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children)


def _refused(problem: str, node: yaml.Node) -> YAMLLimitError:
    return YAMLLimitError(None, None, problem, node.start_mark)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"),
    list("-+0123456789."),
)


def safe_load(text: str | bytes):
    """`yaml.safe_load` with YAML 1.2 floats and the limits above.

    Raises:
        yaml.YAMLError: not YAML, or refused by a limit (YAMLLimitError).
    """
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (_Loader is a SafeLoader)


def yaml_problem(e: yaml.YAMLError) -> str:
    """Where and what, on one line (PyYAML's own messages span several): ` at line L, column C: problem` or
    `: problem`, to follow `not valid YAML`."""
    if isinstance(e, yaml.reader.ReaderError):
        if isinstance(e.character, bytes):
            return f" at position {e.position}: cannot decode byte #x{ord(e.character):02x}"
        return f" at position {e.position}: unacceptable character #x{e.character:04x} ({e.reason})"
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{where}: {getattr(e, 'problem', None) or first_line(e)}"


def load_yaml(text: str, source: str | os.PathLike) -> Any:
    """Parse YAML text; a problem is one UserError naming `source`.

    Raises:
        UserError: not YAML (`not valid YAML at line L, column C: ...`) or refused by a limit.
    """
    try:
        return safe_load(text)
    except YAMLLimitError as e:
        raise UserError(f"{source}: refused YAML{yaml_problem(e)}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{source}: not valid YAML{yaml_problem(e)}") from None


def read_yaml_file(path: str | os.PathLike, what: str) -> Any:
    """A YAML file of at most CONFIG_BYTES, decoded by the YAML 1.2 rules (utils/bounded.py) and parsed with the
    limits above.

    Raises:
        UserError: naming the file: missing, not a regular file, too large, not text, not YAML, or refused.
    """
    return load_yaml(read_text(path, what, CONFIG_BYTES), path)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class AugmentConfig(Section):
    """Augmentation of the training split.

    Batched on the device for every dataset (airbench-style, no per-image Python): flips, rotations, translation,
    cutout, mixup/cutmix (timm's Mixup) and, by default, random erasing; for in-memory datasets also the random
    resized crop. Streamed datasets (VOC, folders) crop and colour-jitter each image in the DataLoader workers with
    torchvision.transforms.v2, since those run before the images have a common size. Augmentations with no batched
    equivalent (timm's auto_augment: RandAugment, AugMix, AutoAugment) run per image in DataLoader workers for every
    dataset, through timm's create_transform; the workers then also normalise, and the device-side augmentations
    follow. summary.json records which ran where.
    """

    flip: bool = False  # horizontal flip
    flip_mode: Literal["random", "alternate"] = "random"  # alternate: each image flips every other epoch
    vflip: bool = False  # vertical flip (lensing images have no up or down)
    rot90: bool = False  # rotate by a random multiple of 90 degrees (square images)
    rotate_degrees: float = Field(0.0, ge=0.0, le=180.0)  # rotate by U(-d, d) degrees, bilinear, zero fill
    translate_pixels: int = Field(0, ge=0)  # random crop after padding by this many pixels (pad_mode)
    pad_mode: Literal["reflect", "zeros"] = "reflect"  # translate_pixels' padding: reflected borders or zeros
    cutout_pixels: int = Field(0, ge=0)  # side of a zeroed square at a random position
    # classification: timm's Mixup on whole device batches (one lambda a batch), soft targets
    mixup_alpha: float = Field(0.0, ge=0.0)  # Beta(alpha, alpha) mixing of image pairs; 0: off
    cutmix_alpha: float = Field(0.0, ge=0.0)  # Beta(alpha, alpha) box pasting; 0: off
    mix_prob: float = Field(1.0, ge=0.0, le=1.0)  # probability that a batch is mixed
    mix_switch_prob: float = Field(0.5, ge=0.0, le=1.0)  # with both on: probability of cutmix instead of mixup
    # per image in DataLoader workers (in-memory and streamed datasets), through timm's create_transform: an
    # auto_augment spec as timm writes it, e.g. "rand-m9-mstd0.5-inc1" (RandAugment), "augmix-m5-w4-d2", "original"
    auto_augment: str | None = None
    # timm-style random erasing (area 2-33 %, aspect 0.3-3.3, per-pixel normal noise in normalised units), with
    # this probability per image; batched on the device (ours) or per image in the workers (timm's RandomErasing)
    random_erasing: float = Field(0.0, ge=0.0, le=1.0)
    random_erasing_on: Literal["device", "workers"] = "device"
    # torchvision's RandomResizedCrop (aspect 3/4-4/3) to data.image_size with data.interpolation: area scale, e.g.
    # [0.5, 1]; streamed datasets in the workers, in-memory ones batched on the device (one resampling a batch)
    random_resized_crop: list[Annotated[float, Field(gt=0.0, le=1.0)]] | None = Field(None, min_length=2, max_length=2)
    # streamed datasets only (in the workers):
    color_jitter: float = Field(0.0, ge=0.0, le=1.0)  # brightness, contrast and saturation strength

    @field_validator("random_resized_crop")
    @classmethod
    def _ordered(cls, scale: list[float] | None) -> list[float] | None:
        if scale is not None and scale[0] > scale[1]:
            raise ValueError("expected [smallest, largest] area fractions")
        return scale


def _default_dataset() -> str:
    """The dataset of a config that names none: chosen by the data layer (imported only when it is needed)."""
    from visionbench.data import DEFAULT_DATASET

    return DEFAULT_DATASET


class DataConfig(Section):
    name: str = Field(default_factory=_default_dataset)
    root: str | None = None  # searched first, then $VISIONBENCH_DATA, ~/.cache/visionbench, system folders
    subset: int | None = Field(None, ge=1)  # use only the first N training images
    test_subset: int | None = Field(None, ge=1)  # evaluate on the first N test images only (quick searches)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # carved from train, seeded by split_seed
    split_seed: int = Field(0, ge=0, lt=2**32)  # apart from trainer.seed: seeds compare on one validation set
    download: bool = True  # try the official source when files are missing
    kwargs: dict[str, Any] = {}  # extra arguments of the dataset builder
    augment: AugmentConfig = AugmentConfig()
    # square side after resizing. Streamed datasets (VOC, image folders, CSV manifests): in DataLoader workers,
    # default 224. In-memory datasets: shrunk once at load; enlarged per batch on the device, so that only the
    # stored images are held (CIFAR-100 at 384 px would be 22 GB of uint8 held whole)
    image_size: int | None = Field(None, ge=8)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"  # every resize (antialiased, as torchvision's)
    # evaluation as timm's crop_pct: shorter side resized to floor(image_size / crop_pct), then the centre
    # image_size square; null: resized to image_size x image_size, nothing cut
    eval_crop_pct: float | None = Field(None, gt=0.0, le=1.0)
    # false: images only scaled to [0, 1] (grey levels / 255), no mean or std, in training and at predict/export
    normalize: bool = True
    # per-channel statistics that standardise the images, in [0, 1] units, in place of the train split's (streamed
    # datasets: ImageNet's); e.g. [0.5, 0.5, 0.5] for timm's ViT weights (their pretrained_cfg's mean and std)
    mean: list[float] | None = Field(None, min_length=1)
    std: list[Annotated[float, Field(gt=0.0)]] | None = Field(None, min_length=1)
    # streamed datasets only:
    grayscale: bool = False  # decode as one channel
    num_workers: int | None = Field(None, ge=0)  # DataLoader worker processes; default min(8, CPU count)


class ModelConfig(Section):
    name: str = "small_cnn"  # a registered name (`visionbench models`), `timm:<name>` or `torchvision:<name>`
    kwargs: dict[str, Any] = {}  # builder arguments; null means "the architecture's default"
    max_params: float | None = Field(None, gt=0)  # refuse to start a run whose model has more parameters
    # a .safetensors / .pth / .pt / .bin file, a run directory, an experiment folder (its newest finished run), or
    # "imagenet" (the library's own ImageNet weights of a torchvision:/timm: model; "timm" is its old name)
    pretrained: str | None = None
    # ordered (regex, replacement) pairs renaming the pretrained file's keys before they are matched by name
    pretrained_key_map: list[Annotated[list[str], Field(min_length=2, max_length=2)]] = Field(default_factory=list)
    keep_head: bool = False  # load the pretrained classifier too (the task's outputs must match its width)
    freeze: str | list[str] | None = None  # "backbone" (all but the head) or module-name patterns (fnmatch)

    @field_validator("pretrained_key_map")
    @classmethod
    def _compiles(cls, pairs: list[list[str]]) -> list[list[str]]:
        for pattern, _ in pairs:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{pattern!r} is not a regular expression ({e})") from None
        return pairs


class TaskConfig(Section):
    """Loss and metrics; each task reads the keys it knows and checks that the others keep their defaults."""

    name: str | None = None  # default: the dataset's task kind (classification, multilabel, regression)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)  # classification
    auroc: bool = False  # classification: also one-vs-rest ROC AUC (macro, and per class in summary.json)
    pos_weight: float | list[float] | None = None  # multilabel: BCE weight of positives (one value or per class)
    threshold: float = Field(0.5, gt=0.0, lt=1.0)  # multilabel: probability threshold of F1
    loss: Literal["l1", "mse", "rmse", "huber"] = "l1"  # regression; rmse: the square root of each batch's MSE
    huber_delta: float = Field(1.0, gt=0.0)  # regression, huber loss, in standardised target units
    standardize_targets: bool = True  # regression: train on (y - mean) / std of the train split


class OptimConfig(Section):
    name: str = "sgd"  # sgd, adam, adamw
    lr: float = Field(0.05, gt=0.0)  # peak learning rate
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # sgd
    nesterov: bool = False  # sgd
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)  # adam, adamw
    eps: float | None = Field(None, gt=0.0)  # adaptive optimizers' epsilon; default: the optimizer's own
    backbone_lr_scale: float = Field(1.0, gt=0.0)  # learning-rate multiplier of everything but the head
    weight_decay: float = Field(5e-4, ge=0.0)
    no_decay_norm_bias: bool = True  # no weight decay on norm weights and biases (1-D parameters)
    norm_bias_lr_scale: float = Field(1.0, gt=0.0)  # airbench gives BN biases a larger learning rate
    schedule: str = "cosine"  # constant, cosine, step, one_cycle
    warmup_epochs: float = Field(0.0, ge=0.0, le=1e6)  # linear warmup, counted in (fractional) epochs
    min_lr_factor: float = Field(0.0, ge=0.0, le=1.0)  # floor of cosine and one_cycle, as a fraction of lr
    step_epochs: list[float] = Field(default_factory=list)  # step schedule: epochs at which lr *= step_gamma
    step_gamma: float = Field(0.1, gt=0.0)
    # Lookahead (Zhang et al., 2019; timm's wrapper): every k steps the slow weights move alpha of the way to the
    # fast ones and the fast weights restart from them; None: off
    lookahead_k: int | None = Field(None, ge=1)
    lookahead_alpha: float = Field(0.5, gt=0.0, le=1.0)


class TrainerConfig(Section):
    # 0: no training, the model as built (its pretrained weights) evaluated on val and test, as Lightning's
    # `validate`/`test` and timm's validate.py do; the run directory is written as for a trained run
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    seed: int = Field(0, ge=0, lt=2**32)  # NumPy's seed range
    deterministic: bool = False  # deterministic algorithms: bit-identical resume on CPU
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # autocast dtype on CUDA
    cpu_precision: Literal["bf16", "fp32"] = "fp32"  # autocast dtype on CPU (bf16 pays on AVX-512 BF16 CPUs)
    channels_last: bool = True  # NHWC memory format: faster on CUDA and on CPU (oneDNN), measured in benchmarks/
    compile: bool = False  # torch.compile the training model; falls back to eager with a warning if it fails
    # torch.compile's mode: reduce-overhead adds CUDA graphs (fewer kernel launches for small models)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    # a config tuned for CUDA (the speed configs): without CUDA it runs on CPU after a one-line warning, with
    # compile off (its warm-up would dominate a CPU run); `device: auto` still chooses the device
    expect_cuda: bool = False
    accumulate_steps: int = Field(1, ge=1)  # micro-batches per optimizer step
    unfreeze_at_epoch: int | None = Field(None, ge=1)  # make model.freeze's parameters trainable from this epoch
    grad_clip_norm: float | None = Field(None, gt=0.0)
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)  # evaluate an EMA of the weights
    tta: Literal["none", "flip"] = "none"  # test-time augmentation at evaluation
    eval_every_epochs: int = Field(1, ge=1)  # validation cadence
    eval_test_every_epoch: bool = False  # also evaluate test each epoch (test curves; costs time)
    checkpoint_every_minutes: float | None = Field(10.0, gt=0.0)  # mid-epoch checkpoints
    # end-of-epoch checkpoints every this many epochs (the last epoch always); null: the last epoch only (a run of
    # seconds, where a resume would gain nothing and each write costs a device sync and a disk write)
    checkpoint_every_epochs: int | None = Field(1, ge=1)
    checkpoint_every_steps: int | None = Field(None, ge=1)  # mid-epoch checkpoints by step count
    num_threads: int | None = Field(None, ge=1, le=4096)  # torch CPU threads; default: torch's own
    out_dir: str = "runs"
    experiment: str | None = None  # default: the config file's stem
    progress: Literal["auto", "bar", "lines"] = "auto"  # auto: a bar only when stdout is a terminal
    # train for this long: the learning-rate schedule runs on elapsed training time instead of steps, so the run
    # anneals and ends at the budget (`epochs` stays an upper bound); evaluation is not counted unless asked
    time_budget_minutes: float | None = Field(None, gt=0.0)
    time_budget_counts_eval: bool = False
    plots: bool = True  # `train` draws the run's figures as it ends; false leaves them to `report` (matplotlib: ~1 s)
    tensorboard: bool = False  # also write TensorBoard event files (`<run>/tensorboard/`) during training

    @field_validator("unfreeze_at_epoch", "time_budget_minutes")
    @classmethod
    def _needs_training(cls, value: float | None, info: ValidationInfo) -> float | None:
        # `epochs` is validated first (fields validate in order): absent from info.data when it was refused itself
        if value is not None and info.data.get("epochs") == 0:
            raise ValueError("trainer.epochs is 0 (evaluate the model as built, no training); expected null")
        return value


class RunConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)  # built when needed: its default dataset is the data layer's
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()


def load_config(path: str | Path | None, overrides: list[str] = (), experiment: str | None = None) -> RunConfig:
    """Read a YAML config, apply `dotted.key=value` overrides and validate.

    Args:
        path: the YAML file; None starts from the defaults.
        overrides: `key=value` strings; values are parsed as YAML (`0.05`, `1e-3`, `true`, `[1, 2]`).
        experiment: the experiment name used when the config sets none (the CLI passes the file's stem).

    Raises:
        UserError: missing or unreadable file, bad YAML, a bad override, or a value the schema refuses.
    """
    source = str(path) if path is not None else "<defaults>"
    raw = read_config_file(path) if path is not None else {}
    return config_from_raw(raw, overrides, source, experiment)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The YAML mapping of a config file, not yet validated (a `compare` config also holds its `matrix`)."""
    path = Path(path)
    raw = read_yaml_file(path, "config")
    raw = {} if raw is None else raw  # an empty file is the defaults; [], 0 or false is not a config
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections (data, model, ...), got {type(raw).__name__}")
    return raw


def config_from_raw(
    raw: dict[str, Any], overrides: list[str] = (), source: str = "<config>", experiment: str | None = None
) -> RunConfig:
    """Apply `dotted.key=value` overrides to a copy of a plain mapping, set the default experiment name, validate."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        _apply_override(raw, item, source)
    if experiment:
        trainer = raw.setdefault("trainer", {})
        if isinstance(trainer, dict) and not trainer.get("experiment"):  # any other shape: validate names it
            trainer["experiment"] = experiment
    return validate(raw, source)


def validate(raw: dict[str, Any], source: str) -> RunConfig:
    """Turn a plain dict into a RunConfig; the first problem becomes a one-line UserError."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"{source}: {_describe(e.errors()[0])}") from None


def dump_config(cfg: RunConfig) -> str:
    """YAML text of the fully resolved config; loading it back gives an equal config."""
    return yaml.safe_dump(cfg.model_dump(mode="python"), sort_keys=False, default_flow_style=None)


def config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    return _diff(a.model_dump(), b.model_dump(), "")


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = list(dict.fromkeys([*a, *b]))
        return [d for k in keys for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def override_text(key: str, value: Any) -> str:
    """`key=value` with the value written as YAML, so that `_apply_override` reads back the same value."""
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return f"{key}={text}"


def _apply_override(raw: dict[str, Any], item: str, source: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {_short(item)}: expected dotted.key=value, e.g. optim.lr=0.01")
    try:
        value = safe_load(text) if text.strip() else None
    except YAMLLimitError as e:
        raise UserError(f"--set {_key_text(key)}: refused YAML value{yaml_problem(e)}") from None
    except yaml.YAMLError:
        value = text  # not YAML: keep the string, the schema decides whether a string is acceptable
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {_key_text(key)}: {_key_text('.'.join(parts[: i + 1]))} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _describe(err: dict[str, Any]) -> str:
    loc = [_key_text(str(p)) for p in err["loc"]]
    key = ".".join(loc) or "<top level>"
    if err["type"] == "extra_forbidden":
        valid = _fields_at(loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=3, cutoff=0.4)
        hint = f"closest valid keys: {', '.join('.'.join([*loc[:-1], c]) for c in close)}" if close else ""
        hint = hint or f"valid keys here: {', '.join(valid)}"
        return f"unknown key {key}; {hint}"
    shown = _short(err.get("input"))
    if err["type"] == "model_type":  # a value where a section belongs: `trainer: 5`, `--set data.augment=5`
        valid = _fields_at(loc)
        return f"{key}: expected a section (a mapping of {', '.join(valid[:4])}, ...), got {shown}"
    msg = err["msg"]
    msg = msg[0].lower() + msg[1:] if msg else msg
    return f"{key}: {msg.replace('input should be', 'expected')}, got {shown}"


class _ShortRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:  # repr of an int beyond 4,300 digits raises, and long ones say nothing
            return f"<an int of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_REPR = _ShortRepr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 2, 4, 4, 4, 4
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = 60, 40, 60


def _short(value: Any) -> str:
    """A value for a one-line message: reprlib visits only what it shows, so a value whose aliases share a huge
    structure costs no more to describe than a small one."""
    return " ".join(_REPR.repr(value).split())


def _key_text(key: str) -> str:
    """A key as written when it is short and printable, else its bounded repr (a newline would split the line)."""
    return key if key.isprintable() and len(key) <= 80 else _short(key)


def _fields_at(loc: list[str]) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
