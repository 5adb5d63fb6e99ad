import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from mlp_sweep.training.config import ALLOWED_OPTIMIZERS, with_canonical_names
from mlp_sweep.training.model import MLP

from conftest import CONF_DIR, compose_config

OPTIMIZERS = sorted(p.stem for p in (CONF_DIR / "optimizer").glob("*.yaml"))
WHITELIST = with_canonical_names(ALLOWED_OPTIMIZERS)


def test_config_offers_the_course_optimizers_and_adamw():
    assert {"adam", "sgd", "rmsprop", "adamw"} <= set(OPTIMIZERS)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_choice_is_the_real_torch_class_and_steps(name):
    cfg = compose_config(f"optimizer={name}")
    model = MLP((1, 28, 28), [8], 10)
    optimizer = instantiate(cfg.optimizer, _execution_whitelist_=WHITELIST)(model.parameters())
    assert f"torch.optim.{type(optimizer).__name__}" == cfg.optimizer._target_
    assert optimizer.param_groups[0]["lr"] == cfg.optimizer.lr

    before = [p.detach().clone() for p in model.parameters()]
    torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_sgd_options_reach_torch():
    cfg = compose_config("optimizer=sgd", "optimizer.momentum=0.5", "optimizer.nesterov=true",
                         "optimizer.weight_decay=1e-4")
    optimizer = instantiate(cfg.optimizer, _execution_whitelist_=WHITELIST)(MLP((4,), [], 2).parameters())
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.5, True, 1e-4)


@pytest.mark.parametrize("target", ["os.system", "pathlib.Path.touch"])
def test_execution_whitelist_refuses_a_target_outside_torch_optimizers(tmp_path, target):
    marker = tmp_path / "ran"
    cfg = compose_config(f"optimizer._target_={target}", f"+optimizer._args_=['{marker}']")
    with pytest.raises(InstantiationException, match="execution whitelist"):
        instantiate(cfg.optimizer, _execution_whitelist_=WHITELIST)(None)
    assert not marker.exists()
