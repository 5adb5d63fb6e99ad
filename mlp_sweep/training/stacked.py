"""K MLPs of one shape as one computation: each weight stacked on a leading member axis, the first
layer one matrix multiply on the batch they share, the others one batched multiply.

The members are ordinary `MLP`s built as a single run builds them (its seed, its initialisation);
`StackedMLP` copies their weights in and `export` copies a member's back out, so a member's
`model.pt` is a single run's. Each member keeps its own torch optimizer and schedule, stepping
its slice of the stacked weights (`MemberSteps`): any optimizer, each with its own settings.
"""

import torch
from torch import nn
from torch.nn import functional as F

from mlp_sweep.training.model import MLP


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

    def __init__(self, members: list[MLP]) -> None:
        super().__init__()
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
        dropout = [[layer.dropout for layer in hidden] for hidden, _ in layers]
        self.register_buffer("dropout", torch.tensor(dropout, dtype=torch.float32).reshape(
            self.size, len(self.activations)))
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
        rate = self.dropout[:, depth]
        if not self.training or not bool((rate > 0).any()):
            return h
        keep = (1 - rate).view(-1, 1, 1)
        mask = torch.rand_like(h, dtype=torch.float32) < keep
        return h * mask / keep

    def export(self, member: int) -> None:
        """Copy member `member`'s stacked weights (and batch statistics) into its own MLP."""
        with torch.no_grad():
            for stacked, originals in self.sources:
                originals[member].copy_(stacked[member])

    def weights_of(self, member: int) -> list[torch.Tensor]:
        """A copy of one member's stacked tensors: what `restore` puts back (its best epoch)."""
        return [stacked[member].detach().clone() for stacked, _ in self.sources]

    def restore(self, member: int, saved: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for (stacked, _), tensor in zip(self.sources, saved):
                stacked[member].copy_(tensor)

    def keep(self, members: list[int]) -> None:
        """Go on with `members` only (indices into the current stack): the others have ended.
        The stacked weights become new tensors (autograd fixes a leaf's shape)."""
        index = torch.tensor(members, device=self.dropout.device)
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
        self.dropout = self.dropout.index_select(0, index)
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


def member_losses(logits: torch.Tensor, labels: torch.Tensor,
                  label_smoothing: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy, with its own label smoothing: (members,), as
    `F.cross_entropy(logits[k], labels, label_smoothing=s[k])` computes it."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(-1, labels.expand(logits.shape[0], -1).unsqueeze(-1)).squeeze(-1)
    smooth = -log_probs.mean(-1)
    return ((1 - label_smoothing).unsqueeze(1) * nll
            + label_smoothing.unsqueeze(1) * smooth).mean(1)
