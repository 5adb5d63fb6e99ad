import pytest

from mlp_sweep.errors import ConfigError
from mlp_sweep.training.config import validate
from mlp_sweep.training.devices import resolve_device

from conftest import compose_config


def test_default_config_is_the_course_recipe():
    cfg = compose_config()
    validate(cfg)
    assert cfg.dataset.name == "mnist" and list(cfg.dataset.input_shape) == [1, 28, 28]
    assert list(cfg.model.hidden_sizes) == [128, 64] and cfg.model.dropout == 0
    assert cfg.activation._target_ == "torch.nn.ReLU"
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-3
    assert (cfg.trainer.batch_size, cfg.trainer.epochs) == (64, 5)
    assert (list(cfg.dataset.mean), list(cfg.dataset.std)) == ([0.5], [0.5])
    assert cfg.objective == "test_accuracy"


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.hidden_sizes=[128,0]", "model.hidden_sizes=[128, 0] contains 0; allowed: positive integers"),
        ("model.hidden_sizes=[-5]", "contains -5"),
        ("model.hidden_sizes=64", "model.hidden_sizes=64 is not a list"),
        ("model.dropout=1.0", "model.dropout=1.0 is out of range"),
        ("optimizer.lr=0", "optimizer.lr=0 is not allowed; allowed: a number > 0"),
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1 is not allowed"),
        ("trainer.epochs=0", "trainer.epochs=0 is not allowed; allowed: an integer >= 1"),
        ("trainer.batch_size=-64", "trainer.batch_size=-64 is not allowed"),
        ("trainer.threads=-1", "trainer.threads=-1 is not allowed; allowed: an integer >= 0"),
        ("dataset.name=imagenet", "dataset.name='imagenet' is not allowed; allowed: mnist, fashion_mnist, cifar10"),
        ("optimizer._target_=os.system", "optimizer._target_='os.system' is not allowed; allowed: torch.optim.Adam"),
        ("activation._target_=builtins.eval", "activation._target_='builtins.eval' is not allowed"),
        ("objective=loss", "objective='loss' is not allowed; allowed: test_accuracy, val_accuracy"),
        ("objective=val_accuracy", "objective=val_accuracy needs a validation split"),
        ("model.depth=0", "model.depth=0 is not allowed; allowed: an integer >= 1"),
        ("model.width=0", "model.width=0 is not allowed; allowed: an integer >= 1"),
        ("model.depth=2", "model.depth=2 and model.width=None: allowed: both integers >= 1"),
        ("model.norm=group", "model.norm='group' is not allowed; allowed: none, batch, layer"),
        ("loss.label_smoothing=1.5", "loss.label_smoothing=1.5 is out of range; "
                                     "allowed: 0 <= label_smoothing < 1"),
        ("optimizer.weight_decay=-1", "optimizer.weight_decay=-1 is not allowed"),
        ("augment=shift", None),
        ("trainer.early_stopping=3", "trainer.early_stopping=3 watches the validation accuracy"),
    ],
)
def test_bad_values_are_refused_with_key_value_and_what_is_allowed(override, message):
    if message is None:  # a valid choice: accepted as it is
        validate(compose_config(override))
        return
    with pytest.raises(ConfigError) as error:
        validate(compose_config(override))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["augment=shift", "augment.shift=-1"],
         "augment.shift=-1 is not allowed; allowed: an integer >= 0"),
        (["augment=affine", "augment.degrees=200"], "augment.degrees=200 is out of range"),
        (["augment=affine", "augment.scale=1.5"], "augment.scale=1.5 is out of range"),
        (["scheduler=cosine", "trainer.epochs=1", "scheduler.warmup_epochs=2"],
         "scheduler.warmup_epochs=2 is not allowed with trainer.epochs=1; "
         "allowed: 0 <= warmup_epochs < trainer.epochs"),
        (["scheduler=step", "scheduler.interval=batch"],
         "scheduler.interval='batch' is not allowed; allowed: step, epoch"),
        (["scheduler=step", "scheduler._target_=os.system"],
         "scheduler._target_='os.system' is not allowed"),
        (["augment=shift", "augment._target_=os.system"],
         "augment._target_='os.system' is not allowed"),
    ],
)
def test_bad_schedule_and_augment_values_are_refused(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(*overrides))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_search_shape_replaces_hidden_sizes():
    from mlp_sweep.training.model import hidden_sizes

    assert hidden_sizes(compose_config().model) == [128, 64]
    assert hidden_sizes(compose_config("model.depth=3", "model.width=256").model) == [256] * 3


def test_cpu_is_always_a_device_and_auto_finds_one():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")


def test_absent_or_unknown_device_is_refused():
    import torch

    absent = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ConfigError, match=f"trainer.device='{absent}' is not present"):
        resolve_device(absent)
    with pytest.raises(ConfigError, match="trainer.device='gpu0' is not a device name"):
        resolve_device("gpu0")


def test_experiment_course_is_the_default_recipe_and_strong_the_searched_one():
    from omegaconf import OmegaConf

    assert OmegaConf.to_container(compose_config("experiment=course")) == \
        OmegaConf.to_container(compose_config())
    strong = compose_config("experiment=strong")
    validate(strong)
    assert (strong.model.depth, strong.model.width, strong.model.norm) == (3, 1105, "layer")
    assert strong.optimizer._target_ == "torch.optim.AdamW" and strong.optimizer.lr == 0.00119
    assert strong.scheduler._target_.endswith("OneCycleLR") and strong.augment.shift == 2
    assert (strong.trainer.epochs, strong.trainer.batch_size) == (27, 256)
    fashion = compose_config("experiment=fashion_mnist")
    assert fashion.dataset.name == "fashion_mnist" and fashion.model.width == 1105
    # An override after the experiment still wins, as after any group.
    assert compose_config("experiment=strong", "trainer.epochs=3").trainer.epochs == 3
