"""Validation of the composed config, done once where it enters `train()`.

Hydra checks that config groups exist; this checks the values inside them, so a bad value
fails before any data is read or any folder is written, with a message naming the key.
"""

from collections.abc import Sequence

from hydra.utils import get_object as locate
from omegaconf import DictConfig, ListConfig

from mlp_sweep.errors import ConfigError
from mlp_sweep.training.data import LOADERS
from mlp_sweep.training.model import NORMS
from mlp_sweep.training.precision import check_precision
from mlp_sweep.values import is_number

# Element-wise activation modules: they keep the layer's shape and need no required argument.
ALLOWED_ACTIVATIONS = tuple(
    f"torch.nn.{name}"
    for name in (
        "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "ELU", "SELU", "CELU", "SiLU", "Mish",
        "Softplus", "PReLU", "ReLU6", "RReLU", "Hardtanh", "Hardswish", "Hardsigmoid",
        "LogSigmoid", "Softsign", "Tanhshrink",
    )
)

# torch.optim optimizers that work on dense MLP parameters with a plain `step()`
# (LBFGS needs a closure, SparseAdam sparse gradients, Muon 2-D parameters only).
ALLOWED_OPTIMIZERS = tuple(
    f"torch.optim.{name}"
    for name in (
        "Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam",
        "ASGD", "Rprop", "Adafactor",
    )
)

# Schedules with a plain `step()` (ReduceLROnPlateau needs a metric, LambdaLR a function).
ALLOWED_SCHEDULERS = (
    "mlp_sweep.training.schedules.warmup_cosine",
    *(f"torch.optim.lr_scheduler.{name}" for name in (
        "OneCycleLR", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR",
        "CosineAnnealingWarmRestarts", "LinearLR", "ConstantLR", "PolynomialLR", "CyclicLR",
    )),
)
ALLOWED_AUGMENTS = tuple(f"mlp_sweep.training.augment.{name}"
                         for name in ("RandomShift", "RandomAffine", "RandomFlipCrop"))
ALLOWED_LOSSES = ("torch.nn.CrossEntropyLoss",)
INTERVALS = ("step", "epoch")


def with_canonical_names(targets: tuple[str, ...]) -> list[str]:
    """The targets plus the modules torch defines them in, for Hydra's execution whitelist,
    which checks both the name in the config and the resolved class."""
    canonical = []
    for target in targets:
        cls = locate(target)
        canonical.append(f"{cls.__module__}.{cls.__qualname__}")
    return [*targets, *canonical]


OBJECTIVES = ("test_accuracy", "val_accuracy")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value that is out of range or not allowed."""
    _one_of("dataset.name", cfg.dataset.name, tuple(LOADERS))
    for key in ("train_limit", "val_size", "test_limit"):
        value = cfg.dataset.get(key)
        if value is not None:
            _positive_int(f"dataset.{key}", value, allow_zero=key == "val_size")

    _validate_model(cfg.model)
    _one_of("activation._target_", cfg.activation._target_, ALLOWED_ACTIVATIONS)
    _one_of("optimizer._target_", cfg.optimizer._target_, ALLOWED_OPTIMIZERS)
    lr = cfg.optimizer.get("lr")
    if lr is not None and (not is_number(lr) or lr <= 0):
        raise ConfigError(f"optimizer.lr={lr!r} is not allowed; allowed: a number > 0")
    weight_decay = cfg.optimizer.get("weight_decay")
    if weight_decay is not None and (not is_number(weight_decay) or weight_decay < 0):
        raise ConfigError(f"optimizer.weight_decay={weight_decay!r} is not allowed; "
                          "allowed: a number >= 0")
    _one_of("loss._target_", cfg.loss._target_, ALLOWED_LOSSES)
    smoothing = cfg.loss.get("label_smoothing", 0.0)
    if not is_number(smoothing) or not 0 <= smoothing < 1:
        raise ConfigError(f"loss.label_smoothing={smoothing!r} is out of range; "
                          "allowed: 0 <= label_smoothing < 1")

    _positive_int("trainer.epochs", cfg.trainer.epochs)
    _positive_int("trainer.batch_size", cfg.trainer.batch_size)
    _positive_int("trainer.threads", cfg.trainer.threads, allow_zero=True)
    check_precision(cfg.trainer.get("precision", "fp32"))
    checkpoint = cfg.trainer.get("checkpoint", True)
    if not isinstance(checkpoint, bool):
        raise ConfigError(f"trainer.checkpoint={checkpoint!r} is not allowed; allowed: true, false")
    resume = cfg.trainer.get("resume")
    if resume is not None and (not isinstance(resume, str) or not resume):
        raise ConfigError(f"trainer.resume={resume!r} is not allowed; allowed: a run folder "
                          "holding a checkpoint.pt, or null")
    progress = cfg.trainer.get("progress", "auto")
    if progress not in (True, False, "auto"):
        raise ConfigError(f"trainer.progress={progress!r} is not allowed; allowed: auto, true, false")
    _one_of("objective", cfg.objective, OBJECTIVES)
    if cfg.objective == "val_accuracy" and not cfg.dataset.get("val_size"):
        raise ConfigError(
            "objective=val_accuracy needs a validation split; "
            f"dataset.val_size={cfg.dataset.get('val_size')!r}, allowed: an integer > 0"
        )
    patience = cfg.trainer.get("early_stopping")
    if patience is not None:
        _positive_int("trainer.early_stopping", patience, allow_zero=True)
        if patience and not cfg.dataset.get("val_size"):
            raise ConfigError(
                f"trainer.early_stopping={patience} watches the validation accuracy, and "
                f"dataset.val_size={cfg.dataset.get('val_size')!r}; allowed: 0 (off), "
                "or dataset.val_size > 0")
    _validate_scheduler(cfg.scheduler, cfg.trainer.epochs)
    _validate_augment(cfg.augment)
    _validate_logger(cfg.get("logger"))


def _validate_model(model: DictConfig) -> None:
    depth, width = model.get("depth"), model.get("width")
    for key, value in (("depth", depth), ("width", width)):
        if value is not None:
            _positive_int(f"model.{key}", value)
    if (depth is None) != (width is None):
        raise ConfigError(f"model.depth={depth!r} and model.width={width!r}: allowed: both "
                          "integers >= 1 (depth layers of width units), or both null "
                          "(model.hidden_sizes)")
    if depth is None:
        _validate_hidden_sizes(model.hidden_sizes)
    dropout = model.dropout
    if not is_number(dropout) or not 0 <= dropout < 1:
        raise ConfigError(f"model.dropout={dropout!r} is out of range; allowed: 0 <= dropout < 1")
    _one_of("model.norm", model.get("norm", "none"), NORMS)


def _validate_hidden_sizes(hidden_sizes: object) -> None:
    if not isinstance(hidden_sizes, (ListConfig, Sequence)) or isinstance(hidden_sizes, str):
        raise ConfigError(
            f"model.hidden_sizes={hidden_sizes!r} is not a list; "
            "allowed: a list of positive integers, e.g. [128,64], or [] for a linear classifier"
        )
    for size in hidden_sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ConfigError(
                f"model.hidden_sizes={list(hidden_sizes)} contains {size!r}; "
                "allowed: positive integers"
            )


def _validate_scheduler(scheduler: DictConfig, epochs: int) -> None:
    if scheduler.get("_target_") is None:
        return
    _one_of("scheduler._target_", scheduler._target_, ALLOWED_SCHEDULERS)
    _one_of("scheduler.interval", scheduler.get("interval"), INTERVALS)
    warmup = scheduler.get("warmup_epochs")
    if warmup is not None and (not is_number(warmup) or not 0 <= warmup < epochs):
        raise ConfigError(f"scheduler.warmup_epochs={warmup!r} is not allowed with "
                          f"trainer.epochs={epochs}; allowed: 0 <= warmup_epochs < trainer.epochs")


def _validate_augment(augment: DictConfig) -> None:
    if augment.get("_target_") is None:
        return
    _one_of("augment._target_", augment._target_, ALLOWED_AUGMENTS)
    if augment.get("shift") is not None:
        _positive_int("augment.shift", augment.shift, allow_zero=True)
    for key, bound in (("degrees", 180), ("scale", 1)):
        value = augment.get(key)
        if value is not None and (not is_number(value) or not 0 <= value < bound):
            raise ConfigError(f"augment.{key}={value!r} is out of range; "
                              f"allowed: 0 <= {key} < {bound}")


# Tracker settings that may be null: W&B's own default then applies.
OPTIONAL_TRACKER_SETTINGS = {("wandb", "entity"), ("wandb", "mode"), ("wandb", "group"),
                             ("wandb", "dir")}
WANDB_MODES = ("online", "offline", "disabled")


def _validate_logger(logger: DictConfig | None) -> None:
    # Every tracker setting (conf/logger/) is a path, a URI or a name.
    for tracker, settings in (logger or {}).items():
        for key, value in (settings or {}).items():
            if value is None and (tracker, key) in OPTIONAL_TRACKER_SETTINGS:
                continue
            if not isinstance(value, str) or not value:
                raise ConfigError(f"logger.{tracker}.{key}={value!r} is not allowed; "
                                  "allowed: a non-empty string")
    mode = (logger or {}).get("wandb", {}).get("mode")
    if mode is not None:
        _one_of("logger.wandb.mode", mode, WANDB_MODES)


def _positive_int(key: str, value: object, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed: an integer >= {low}")


def _one_of(key: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed: {', '.join(allowed)}")
