"""The training loop of `engine.fit`, for several members trained as one stacked computation.

Every member sees the same batches in the same order (they share the seed, the batch size and the
augmentation), and ends alone: its callback may stop it (a pruned trial), its loss may diverge (a
failed one), early stopping or its last epoch may finish it; the others go on without it, the
stack made smaller. With dropout 0 each member's history equals its single run's within float
rounding (tests/test_fused.py).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mlp_sweep.training.data import Split, Splits
from mlp_sweep.training.engine import (DivergedError, EpochMetrics, batch_bounds, best_epoch,
                                       run_ends_after)
from mlp_sweep.training.model import MLP
from mlp_sweep.training.precision import autocast
from mlp_sweep.training.schedules import Schedule
from mlp_sweep.training.stacked import MemberSteps, StackedMLP, member_losses


@dataclass
class Member:
    """One model of a stack, as a single run would build it, and how it is doing."""

    model: MLP
    optimizer: torch.optim.Optimizer  # steps its slice of the stack; its schedule moves it
    schedule: Schedule | None
    label_smoothing: float
    on_epoch: Callable[[list[EpochMetrics]], None]  # may raise to stop this member
    history: list[EpochMetrics] = field(default_factory=list)
    best: list[torch.Tensor] | None = None
    ended: BaseException | None = None  # why it stopped before its end (pruned, diverged)
    finished: bool = False  # trained to its end: its model holds the weights it keeps


def fit_stacked(members: list[Member], splits: Splits, epochs: int, batch_size: int,
                generator: torch.Generator, augment: Callable | None = None,
                patience: int = 0, dtype: torch.dtype = torch.float32) -> None:
    """Train the members together for up to `epochs`; each ends with its history, and its model
    with the weights a single run keeps (its best validation epoch, else its last), unless it
    `ended` early."""
    StackedFit(members, dtype).run(splits, epochs, batch_size, generator, augment, patience)


class StackedFit:
    def __init__(self, members: list[Member], dtype: torch.dtype) -> None:
        self.active = list(members)
        self.stack = StackedMLP([m.model for m in members])
        self.optimizer = MemberSteps(self.stack, [m.optimizer for m in members])
        self.dtype = dtype

    def run(self, splits: Splits, epochs: int, batch_size: int, generator: torch.Generator,
            augment: Callable | None, patience: int) -> None:
        for epoch in range(1, epochs + 1):
            if not self.active:
                return
            start = time.perf_counter()
            losses, accuracies = self._train_epoch(splits.train, batch_size, generator, augment)
            for member in self.active:
                if member.schedule and not member.schedule.per_batch:
                    member.schedule.scheduler.step()
            epoch_time = time.perf_counter() - start
            val = evaluate_stacked(self.stack, splits.val) if splits.val is not None else None
            test = evaluate_stacked(self.stack, splits.test)
            done = []
            for i, member in enumerate(self.active):
                member.history.append(EpochMetrics(
                    epoch=epoch, train_loss=losses[i], train_accuracy=accuracies[i],
                    val_accuracy=None if val is None else val[i], test_accuracy=test[i],
                    epoch_time_s=epoch_time))
                if val is not None and best_epoch(member.history) is member.history[-1]:
                    member.best = self.stack.weights_of(i)
                try:
                    member.on_epoch(member.history)
                except Exception as error:  # pruned, or the budget: this member stops
                    member.ended = error
                    done.append(i)
                    continue
                if run_ends_after(member.history, epochs, patience):
                    self._finish(i, member)
                    done.append(i)
            self._drop(done)
        for i, member in enumerate(self.active):
            self._finish(i, member)

    def _finish(self, index: int, member: Member) -> None:
        """Put the member's kept weights into its own model."""
        kept = best_epoch(member.history)
        if member.best is not None and kept is not member.history[-1]:
            self.stack.restore(index, member.best)
        self.stack.export(index)
        member.finished = True

    def _drop(self, indices: list[int]) -> None:
        if not indices:
            return
        keep = [i for i in range(len(self.active)) if i not in indices]
        self.active = [self.active[i] for i in keep]
        if keep:
            self.stack.keep(keep)
            self.optimizer.keep(keep)

    def _train_epoch(self, train: Split, batch_size: int, generator: torch.Generator,
                     augment: Callable | None) -> tuple[list[float], list[float]]:
        """One pass over `train` for every active member: each one's mean loss and accuracy."""
        self.stack.train()
        n = len(train)
        device = train.labels.device
        order = torch.randperm(n, generator=generator).to(device)
        smoothing = self._smoothing(device)
        loss_sum = torch.zeros(len(self.active), dtype=torch.float64, device=device)
        correct = torch.zeros(len(self.active), dtype=torch.int64, device=device)
        for start, end in batch_bounds(n, batch_size):
            batch = order[start:end]
            x, y = train.inputs.index_select(0, batch), train.labels.index_select(0, batch)
            if augment is not None:
                x = augment(x)
            with autocast(x.device, self.dtype):
                logits = self.stack(x)
            losses = member_losses(logits, y, smoothing)
            self.optimizer.zero_grad()
            losses.sum().backward()  # the members share no weight: each gets its own gradient
            self.optimizer.step()
            for member in self.active:
                if member.schedule and member.schedule.per_batch:
                    member.schedule.scheduler.step()
            finite = torch.isfinite(losses.detach())
            if not bool(finite.all()):
                diverged = [i for i, ok in enumerate(finite.tolist()) if not ok]
                for i in diverged:
                    self.active[i].ended = _raised(DivergedError(
                        f"training loss is {losses[i].item()} at sample {start} of the epoch"))
                kept = torch.nonzero(finite).flatten()
                loss_sum, correct = loss_sum[kept], correct[kept]
                losses, logits = losses[kept], logits[kept]
                self._drop(diverged)
                if not self.active:
                    return [], []
                smoothing = self._smoothing(device)
            loss_sum += losses.detach().double() * len(y)
            correct += (logits.argmax(-1) == y).sum(1)
        return (loss_sum / n).tolist(), (correct.double() / n).tolist()

    def _smoothing(self, device: torch.device) -> torch.Tensor:
        return torch.tensor([m.label_smoothing for m in self.active], device=device)


def _raised(error: Exception) -> Exception:
    """`error` with the traceback of where it was found, as a single run's status.json has it."""
    try:
        raise error
    except Exception as raised:
        return raised


@torch.inference_mode()
def evaluate_stacked(stack: StackedMLP, split: Split, batch_size: int = 8192) -> list[float]:
    """Each member's accuracy on `split`, in float32."""
    stack.eval()
    correct = torch.zeros(stack.size, dtype=torch.int64, device=split.labels.device)
    for i in range(0, len(split), batch_size):
        logits = stack(split.inputs[i:i + batch_size])
        correct += (logits.argmax(-1) == split.labels[i:i + batch_size]).sum(1)
    return (correct.double() / len(split)).tolist()
