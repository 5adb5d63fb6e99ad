"""Validation of the composed config, done once where it enters `train()`.

Hydra checks that config groups exist; this checks the values inside them, so a bad value
fails before any data is read or any folder is written, with a message naming the key.
"""

from collections.abc import Sequence

from hydra.utils import get_object as locate
from omegaconf import DictConfig, ListConfig

from mlp_sweep.errors import ConfigError

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



def with_canonical_names(targets: tuple[str, ...]) -> list[str]:
    """The targets plus the modules torch defines them in, for Hydra's execution whitelist,
    which checks both the name in the config and the resolved class."""
    canonical = []
    for target in targets:
        cls = locate(target)
        canonical.append(f"{cls.__module__}.{cls.__qualname__}")
    return [*targets, *canonical]


DATASETS = ("mnist", "fashion_mnist", "cifar10")
OBJECTIVES = ("test_accuracy", "val_accuracy")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value that is out of range or not allowed."""
    _one_of("dataset.name", cfg.dataset.name, DATASETS)
    for key in ("train_limit", "val_size", "test_limit"):
        value = cfg.dataset.get(key)
        if value is not None:
            _positive_int(f"dataset.{key}", value, allow_zero=key == "val_size")

    hidden_sizes = cfg.model.hidden_sizes
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
    dropout = cfg.model.dropout
    if not _is_number(dropout) or not 0 <= dropout < 1:
        raise ConfigError(f"model.dropout={dropout!r} is out of range; allowed: 0 <= dropout < 1")

    _one_of("activation._target_", cfg.activation._target_, ALLOWED_ACTIVATIONS)
    _one_of("optimizer._target_", cfg.optimizer._target_, ALLOWED_OPTIMIZERS)
    lr = cfg.optimizer.get("lr")
    if lr is not None and (not _is_number(lr) or lr <= 0):
        raise ConfigError(f"optimizer.lr={lr!r} is not allowed; allowed: a number > 0")

    _positive_int("trainer.epochs", cfg.trainer.epochs)
    _positive_int("trainer.batch_size", cfg.trainer.batch_size)
    _positive_int("trainer.threads", cfg.trainer.threads, allow_zero=True)
    _one_of("objective", cfg.objective, OBJECTIVES)
    if cfg.objective == "val_accuracy" and not cfg.dataset.get("val_size"):
        raise ConfigError(
            "objective=val_accuracy needs a validation split; "
            f"dataset.val_size={cfg.dataset.get('val_size')!r}, allowed: an integer > 0"
        )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(key: str, value: object, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed: an integer >= {low}")


def _one_of(key: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed: {', '.join(allowed)}")
