"""The multi-layer perceptron: flatten, then Linear -> activation (-> dropout) per hidden size."""

import math
from collections.abc import Callable, Sequence

from torch import nn


class MLP(nn.Sequential):
    """An MLP classifier; `hidden_sizes=[]` gives a linear classifier.

    `activation` is a factory called once per hidden layer (e.g. `nn.ReLU`, or the partial that
    `instantiate` makes from the `activation` config group).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden_sizes: Sequence[int],
        num_classes: int,
        activation: Callable[[], nn.Module] = nn.ReLU,
        dropout: float = 0.0,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), activation()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
