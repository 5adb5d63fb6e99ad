"""How the training loop computes its members: one model alone (`SingleModel`), or K MLPs of one
shape as one computation (`StackedMLP`): each weight stacked on a leading member axis, the first
layer one matrix multiply on the batch they share, the others one batched multiply.

The members are ordinary `MLP`s built as a single run builds them (its seed, its initialisation);
`StackedMLP` copies their weights in and `export` copies a member's back out, so a member's
`model.pt` is a single run's. Each member keeps its own torch optimizer and schedule, stepping
its slice of the stacked weights (`MemberSteps`): any optimizer, each with its own settings, and
its own dropout stream.

A single run is not a stack of one: the plain modules are what it saves and loads, they take
the activations a stack cannot (PReLU's weights, RReLU's random slopes), and its one optimizer
steps its own weights with no views in between.
"""

import torch
from torch import nn
from torch.nn import functional as F

from mlp_sweep.training.model import MLP, dropped


class HiddenLayer:
    """One hidden layer of an MLP read back from its modules."""

    def __init__(self, linear: nn.Linear) -> None:
        self.linear, self.norm, self.activation, self.dropout = linear, None, None, 0.0


def hidden_layers(model: MLP) -> tuple[list[HiddenLayer], nn.Linear]:
    """The model's hidden layers (Linear, norm, activation, dropout) and its output layer."""
    layers: list[HiddenLayer] = []
    modules = [m for m in model if not isinstance(m, nn.Flatten)]
    for module in modules[:-1]:
        if isinstance(module, nn.Linear):
            layers.append(HiddenLayer(module))
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)):
            layers[-1].norm = module
        elif isinstance(module, nn.Dropout):
            layers[-1].dropout = module.p
        else:
            layers[-1].activation = module
    return layers, modules[-1]


def shape_of(model: MLP) -> tuple:
    """What members must share to be stacked: layer sizes, norms and activations (dropout may
    differ). An activation with weights of its own (PReLU) has no stacked form."""
    layers, output = hidden_layers(model)
    return (*((layer.linear.in_features, layer.linear.out_features, _norm_kind(layer.norm),
               _activation_key(layer.activation)) for layer in layers),
            output.in_features, output.out_features)


def unstackable_reason(model: MLP) -> str | None:
    """Why this model cannot train stacked, or None when it can."""
    layers, _ = hidden_layers(model)
    if any(list(layer.activation.parameters()) for layer in layers):
        return f"activation {type(layers[0].activation).__name__} has weights"
    if any(isinstance(layer.activation, nn.RReLU) for layer in layers):
        return "activation RReLU draws its slopes from torch's global random stream"
    return None


def _norm_kind(norm: nn.Module | None) -> tuple:
    if norm is None:
        return ("none",)
    if isinstance(norm, nn.LayerNorm):
        return ("layer", norm.eps, norm.elementwise_affine)
    return ("batch", norm.eps, norm.momentum, norm.affine, norm.track_running_stats)


def _activation_key(activation: nn.Module) -> tuple:
    return (type(activation).__name__, repr(activation))


class StackedMLP(nn.Module):
    """The members' weights, stacked; `forward(x)` gives (members, batch, classes) logits."""

    def __init__(self, members: list[MLP], dropout_streams: list[torch.Generator]) -> None:
        super().__init__()
        self.dropout_streams = list(dropout_streams)
        layers = [hidden_layers(m) for m in members]
        self.size = len(members)
        # (stacked tensor, the members' tensors) pairs: what `export` copies back
        self.sources: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.norm_weights = nn.ParameterList()  # per hidden layer with an affine norm
        self.norm_biases = nn.ParameterList()
        self.norm_kinds: list[tuple] = []
        self.running: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        self._batches_tracked: list[list[torch.Tensor]] = []  # per hidden layer, per member
        self.activations = [layer.activation for layer in layers[0][0]]
        # per member, per hidden layer
        self.dropout = [[layer.dropout for layer in hidden] for hidden, _ in layers]
        for depth in range(len(self.activations) + 1):
            linears = [hidden[depth].linear if depth < len(hidden) else output
                       for hidden, output in layers]
            self.weights.append(self._stack([lin.weight for lin in linears], trainable=True))
            self.biases.append(self._stack([lin.bias for lin in linears], trainable=True))
            if depth == len(self.activations):
                break
            norms = [hidden[depth].norm for hidden, _ in layers]
            self.norm_kinds.append(_norm_kind(norms[0]))
            affine = norms[0] is not None and (getattr(norms[0], "elementwise_affine", False)
                                               or getattr(norms[0], "affine", False))
            self.norm_weights.append(self._stack([n.weight for n in norms], trainable=True)
                                     if affine else None)
            self.norm_biases.append(self._stack([n.bias for n in norms], trainable=True)
                                    if affine else None)
            batch = isinstance(norms[0], nn.BatchNorm1d) and norms[0].track_running_stats
            self.running.append((self._stack([n.running_mean for n in norms]),
                                 self._stack([n.running_var for n in norms])) if batch else None)
            self._batches_tracked.append([n.num_batches_tracked for n in norms] if batch else [])

    def _stack(self, tensors: list[torch.Tensor], trainable: bool = False) -> torch.Tensor:
        stacked = torch.stack([t.detach() for t in tensors]).clone()
        if trainable:
            stacked = nn.Parameter(stacked)
        self.sources.append((stacked, tensors))
        return stacked

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs.flatten(1)
        batch = x.shape[0]
        # The first layer sees the same batch in every member: one (batch, members x units)
        # matrix multiply, not one per member.
        w, b = self.weights[0], self.biases[0]
        h = torch.addmm(b.reshape(-1), x, w.reshape(-1, w.shape[-1]).t())
        h = h.view(batch, self.size, -1).transpose(0, 1)  # (members, batch, units)
        for depth, activation in enumerate(self.activations):
            h = activation(self._norm(depth, h))
            h = self._dropout(depth, h)
            w, b = self.weights[depth + 1], self.biases[depth + 1]
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        return h

    def _norm(self, depth: int, h: torch.Tensor) -> torch.Tensor:
        kind = self.norm_kinds[depth]
        weight, bias = self.norm_weights[depth], self.norm_biases[depth]
        if kind[0] == "layer":
            h = F.layer_norm(h, h.shape[-1:], eps=kind[1])
            return h if weight is None else torch.addcmul(bias.unsqueeze(1), h, weight.unsqueeze(1))
        if kind[0] == "batch":
            # Batch statistics are per feature over the batch: members x units features.
            members, batch, units = h.shape
            flat = h.transpose(0, 1).reshape(batch, members * units)
            running = self.running[depth]
            training = self.training or running is None
            if running is not None and self.training:
                for count in self._batches_tracked[depth]:
                    count.add_(1)
            flat = F.batch_norm(
                flat, running[0].view(-1) if running else None,
                running[1].view(-1) if running else None,
                weight.reshape(-1) if weight is not None else None,
                bias.reshape(-1) if bias is not None else None,
                training, kind[2] if kind[2] is not None else 0.0, kind[1])
            return flat.view(batch, members, units).transpose(0, 1)
        return h

    def _dropout(self, depth: int, h: torch.Tensor) -> torch.Tensor:
        """Each member's dropout as its single run draws it: its own mask, from its own stream."""
        if not self.training or not any(rates[depth] for rates in self.dropout):
            return h
        return torch.stack([dropped(member, rates[depth], stream) if rates[depth] else member
                            for member, rates, stream in zip(h, self.dropout,
                                                             self.dropout_streams)])

    def export(self, member: int) -> None:
        """Copy member `member`'s stacked weights (and batch statistics) into its own MLP."""
        with torch.no_grad():
            for stacked, originals in self.sources:
                originals[member].copy_(stacked[member])

    def keep(self, members: list[int]) -> None:
        """Go on with `members` only (indices into the current stack): the others have ended.
        The stacked weights become new tensors (autograd fixes a leaf's shape)."""
        index = torch.tensor(members, device=self.weights[0].device)
        replaced: dict[int, torch.Tensor] = {}
        for tensors in (self.weights, self.biases, self.norm_weights, self.norm_biases):
            for i, tensor in enumerate(tensors):
                if tensor is not None:
                    tensors[i] = replaced[id(tensor)] = nn.Parameter(
                        tensor.detach().index_select(0, index))
        self.running = [None if pair is None else tuple(
            replaced.setdefault(id(t), t.index_select(0, index)) for t in pair)
            for pair in self.running]
        self.sources = [(replaced[id(stacked)], [originals[m] for m in members])
                         for stacked, originals in self.sources]
        self.dropout = [self.dropout[m] for m in members]
        self.dropout_streams = [self.dropout_streams[m] for m in members]
        self._batches_tracked = [[counts[m] for m in members] if counts else []
                                 for counts in self._batches_tracked]
        self.size = len(members)


class MemberSteps:
    """Each member's own torch optimizer, stepping views of the stacked weights: its class, its
    hyperparameters as its schedule moves them, its state, and torch's own update (the fused
    kernels included), so that a member's step is its single run's."""

    def __init__(self, stack: StackedMLP, optimizers: list[torch.optim.Optimizer]) -> None:
        self.stack, self.optimizers = stack, optimizers
        # Where each parameter of a member's optimizer is in the stack, in the optimizer's order
        self.places = []
        for member, optimizer in enumerate(optimizers):
            place = {id(originals[member]): i for i, (_, originals) in enumerate(stack.sources)}
            self.places.append([[place[id(p)] for p in group["params"]]
                                for group in optimizer.param_groups])
        self._bind()

    def _bind(self) -> None:
        """Point each member's optimizer at its slice of every stacked weight and gradient (the
        gradients persist, so the views stay valid), its state carried over."""
        stacked = [tensor for tensor, _ in self.stack.sources]
        for tensor in stacked:
            if tensor.requires_grad:
                tensor.grad = torch.zeros_like(tensor)
        for member, optimizer in enumerate(self.optimizers):
            for group, places in zip(optimizer.param_groups, self.places[member]):
                views = []
                for i in places:
                    view = stacked[i].detach()[member]
                    view.grad = stacked[i].grad[member]
                    views.append(view)
                for old, new in zip(group["params"], views):
                    if old in optimizer.state:
                        optimizer.state[new] = optimizer.state.pop(old)
                group["params"] = views

    def zero_grad(self) -> None:
        for tensor, _ in self.stack.sources:
            if tensor.grad is not None:
                tensor.grad.zero_()

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def keep(self, members: list[int]) -> None:
        """After `StackedMLP.keep(members)`: those members' optimizers, on its new weights."""
        self.optimizers = [self.optimizers[m] for m in members]
        self.places = [self.places[m] for m in members]
        self._bind()


class Stack(nn.Module):
    """K members as one computation: the stacked forward pass, and each member's optimizer
    stepping its slice."""

    def __init__(self, models: list[MLP], optimizers: list[torch.optim.Optimizer],
                 dropout_streams: list[torch.Generator]) -> None:
        super().__init__()
        self.models = list(models)
        self.stack = StackedMLP(self.models, dropout_streams)
        self.steps = MemberSteps(self.stack, optimizers)

    @property
    def size(self) -> int:
        return self.stack.size

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        logits = self.stack(inputs)
        # Whittled down to one member (the others ended), it reads as SingleModel does.
        return logits[0] if self.size == 1 else logits

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.steps.zero_grad()

    def step(self) -> None:
        self.steps.step()

    def export(self, member: int) -> None:
        self.stack.export(member)

    def weights_of(self, member: int) -> dict[str, torch.Tensor]:
        """A copy of one member's weights, as its own model's state dict."""
        self.stack.export(member)
        return {k: v.detach().clone() for k, v in self.models[member].state_dict().items()}

    def keep(self, members: list[int]) -> None:
        self.models = [self.models[m] for m in members]
        self.stack.keep(members)
        self.steps.keep(members)


class SingleModel(nn.Module):
    """One member: its own model and optimizer; its (batch, classes) logits, as a stack of one
    would give them without the member axis (the loop reads both alike)."""

    size = 1

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        super().__init__()
        self.model, self.optimizer = model, optimizer

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.optimizer.step()

    def export(self, member: int) -> None:
        """Its weights are its model's own."""

    def weights_of(self, member: int) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def keep(self, members: list[int]) -> None:
        """Never called with fewer members: the loop stops when its one member ends."""


Computation = Stack | SingleModel


def computation_of(models: list[MLP], optimizers: list[torch.optim.Optimizer],
                   dropout_streams: list[torch.Generator]) -> Computation:
    """How the loop trains these members: alone, or stacked (run.py decided they may be)."""
    if len(models) == 1:
        return SingleModel(models[0], optimizers[0])
    return Stack(models, optimizers, dropout_streams)
