"""The multi-layer perceptron: flatten, then Linear (-> norm) -> activation (-> dropout) per
hidden layer."""

import math
from collections.abc import Callable, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

NORMS: dict[str, Callable[[int], nn.Module] | None] = {
    "none": None, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


class MLP(nn.Sequential):
    """An MLP classifier; `hidden_sizes=[]` gives a linear classifier.

    `activation` is a factory called once per hidden layer (e.g. `nn.ReLU`, or the partial that
    `instantiate` makes from the `activation` config group); `norm` is a key of NORMS.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden_sizes: Sequence[int],
        num_classes: int,
        activation: Callable[[], nn.Module] = nn.ReLU,
        dropout: float = 0.0,
        norm: str = "none",
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in hidden_sizes:
            layers.append(nn.Linear(width, size))
            if NORMS[norm] is not None:
                layers.append(NORMS[norm](size))
            layers.append(activation())
            if dropout > 0:
                layers.append(SeededDropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class SeededDropout(nn.Dropout):
    """Dropout whose masks come from its run's own random stream (`generator`, set by the
    training loop), not torch's global one: a run's masks are then the same whether it trains
    alone or stacked with others (stacked.py draws each member's from its own stream too)."""

    generator: torch.Generator | None = None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return inputs
        return dropped(inputs, self.p, self.generator)


def dropped(inputs: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """`inputs` with a share `p` of its values zeroed and the rest scaled by 1 / (1 - p), the
    mask drawn from `generator`: the one formula of a single run's and a stack's dropout."""
    keep = torch.rand(inputs.shape, generator=generator, device=inputs.device) >= p
    return inputs * keep / (1 - p)


def use_dropout_stream(model: nn.Module, generator: torch.Generator) -> None:
    """Draw every dropout mask of `model` from `generator`."""
    for module in model.modules():
        if isinstance(module, SeededDropout):
            module.generator = generator


def hidden_sizes(model_cfg: DictConfig) -> list[int]:
    """`depth` layers of `width` units when both are set (the search's view of the network),
    else the explicit `hidden_sizes` list."""
    if model_cfg.get("depth") is not None:
        return [model_cfg.width] * model_cfg.depth
    return list(model_cfg.hidden_sizes)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
