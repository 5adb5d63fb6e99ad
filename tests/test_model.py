import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from mlp_sweep.training.config import ALLOWED_ACTIVATIONS, with_canonical_names
from mlp_sweep.training.model import MLP, SeededDropout, parameter_count, use_dropout_stream

from conftest import CONF_DIR, compose_config

ACTIVATIONS = sorted(p.stem for p in (CONF_DIR / "activation").glob("*.yaml"))


@pytest.mark.parametrize("hidden_sizes", [[], [128, 64], [512, 256, 128], [7]])
def test_mlp_maps_images_to_class_logits(hidden_sizes):
    model = MLP((1, 28, 28), hidden_sizes, 10)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [*hidden_sizes, 10]


def test_seed_architecture_has_its_parameter_count():
    # 784*128+128 + 128*64+64 + 64*10+10
    assert parameter_count(MLP((1, 28, 28), [128, 64], 10)) == 109_386


def test_empty_hidden_sizes_is_a_linear_classifier():
    model = MLP((3, 32, 32), [], 10)
    assert [type(m) for m in model] == [nn.Flatten, nn.Linear]
    assert model[1].in_features == 3 * 32 * 32


def test_dropout_follows_each_activation():
    model = MLP((1, 28, 28), [32, 16], 10, nn.Tanh, dropout=0.25)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Flatten", "Linear", "Tanh", "SeededDropout", "Linear", "Tanh",
                     "SeededDropout", "Linear"]
    assert all(m.p == 0.25 for m in model if isinstance(m, nn.Dropout))  # torch's, subclassed


def test_dropout_draws_its_masks_from_the_stream_it_is_given():
    model = MLP((1, 2, 2), [64], 2, dropout=0.5).train()
    x = torch.ones(8, 1, 2, 2)
    masks = []
    for _ in range(2):
        use_dropout_stream(model, torch.Generator().manual_seed(7))
        torch.manual_seed(len(masks))  # the global stream moves: the masks must not
        masks.append(nn.Sequential(*list(model)[:4])(x) == 0)
    assert torch.equal(masks[0], masks[1]) and 0 < masks[0].float().mean() < 1


def test_config_offers_the_course_activations_and_more():
    assert {"relu", "leaky_relu", "sigmoid", "tanh", "gelu"} <= set(ACTIVATIONS)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_every_activation_choice_builds_its_torch_module(name):
    cfg = compose_config(f"activation={name}", "model.hidden_sizes=[16]")
    factory = instantiate(cfg.activation, _partial_=True,
                          _execution_whitelist_=with_canonical_names(ALLOWED_ACTIVATIONS))
    model = MLP(cfg.dataset.input_shape, cfg.model.hidden_sizes, 10, factory)
    assert type(model[2]).__name__ == cfg.activation._target_.rsplit(".", 1)[1]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_leaky_relu_slope_comes_from_the_config():
    cfg = compose_config("activation=leaky_relu", "activation.negative_slope=0.2")
    module = instantiate(cfg.activation, _execution_whitelist_=with_canonical_names(ALLOWED_ACTIVATIONS))
    assert module(torch.tensor([-1.0])).item() == pytest.approx(-0.2)


@pytest.mark.parametrize("norm, layer", [("batch", nn.BatchNorm1d), ("layer", nn.LayerNorm)])
def test_norm_follows_each_hidden_linear(norm, layer):
    model = MLP((1, 28, 28), [32, 16], 10, nn.ReLU, dropout=0.1, norm=norm)
    kinds = [type(m) for m in model]
    assert kinds == [nn.Flatten, nn.Linear, layer, nn.ReLU, SeededDropout,
                     nn.Linear, layer, nn.ReLU, SeededDropout, nn.Linear]
    assert [m.normalized_shape[0] if norm == "layer" else m.num_features
            for m in model if isinstance(m, layer)] == [32, 16]
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)


def test_depth_and_width_build_equal_hidden_layers():
    from mlp_sweep.training.model import hidden_sizes

    cfg = compose_config("model.depth=3", "model.width=100", "model.norm=layer")
    model = MLP((1, 28, 28), hidden_sizes(cfg.model), 10, norm=cfg.model.norm)
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [100, 100, 100, 10]
