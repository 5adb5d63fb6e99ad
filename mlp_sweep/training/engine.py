"""The training loop and the evaluation, on whole tensors sliced into batches.

One loop trains one model or several stacked into one computation (stacked.py): every member sees
the same batches, in the same order, with the same augmentation, and ends alone: its callback may
stop it (a pruned trial), its loss may diverge (a failed one), early stopping or its last epoch
may finish it; the others go on without it. Each member draws its dropout from a stream of its
own and the batch's augmentation comes from a stream no member touches, so a member's epochs
equal its single run's whatever its stack-mates are (tests/test_fused.py).
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy
import torch
from torch import nn
from tqdm import tqdm

from mlp_sweep.training.checkpoint import Checkpoints
from mlp_sweep.training.data import Split, Splits
from mlp_sweep.training.model import use_dropout_stream
from mlp_sweep.training.precision import autocast
from mlp_sweep.training.schedules import Schedule
from mlp_sweep.training.stacked import Computation, SingleModel, computation_of


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite: the run stops instead of training on."""


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_accuracy: float | None
    test_accuracy: float | None  # None: not read this epoch (fit's test_each_epoch)
    epoch_time_s: float


@dataclass
class RandomStreams:
    """A run's random streams, all from `trainer.seed`: the data order, the augmentation, and
    its dropout. A stack shares the first two (its members share the seed) and keeps a dropout
    stream per member, so that no member's draws move another's."""

    order: torch.Generator
    augment: torch.Generator
    dropout: torch.Generator

    @classmethod
    def from_seed(cls, seed: int, device: torch.device) -> "RandomStreams":
        # The data order keeps the seed itself (as torch.Generator().manual_seed(seed) shuffled
        # before); the others get seeds of their own from it.
        augment_seed, dropout_seed = numpy.random.SeedSequence(seed).generate_state(2)
        return cls(torch.Generator().manual_seed(seed),
                   torch.Generator(device).manual_seed(int(augment_seed)),
                   torch.Generator(device).manual_seed(int(dropout_seed)))

    def state(self) -> dict[str, torch.Tensor]:
        return {"order_rng": self.order.get_state(), "augment_rng": self.augment.get_state(),
                "dropout_rng": self.dropout.get_state()}

    def restore(self, state: dict[str, Any]) -> None:
        self.order.set_state(state["order_rng"])
        self.augment.set_state(state["augment_rng"])
        self.dropout.set_state(state["dropout_rng"])


# What a member's loss is computed with: its config's loss module, called as a single run calls it.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Member:
    """One run in the loop: what it trains, as its config builds it, and how it is doing."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    streams: RandomStreams
    on_epoch: Callable[[list[EpochMetrics]], None] = lambda history: None  # may raise: it stops
    loss_fn: LossFn = nn.functional.cross_entropy
    schedule: Schedule | None = None
    checkpoints: Checkpoints | None = None  # gets its state after every epoch it goes on from
    resume: dict | None = None  # a state it wrote: training goes on after its epochs
    history: list[EpochMetrics] = field(default_factory=list)
    best_weights: dict[str, torch.Tensor] | None = None  # its best validation epoch's
    ended: BaseException | None = None  # why it stopped before its end (pruned, diverged)
    finished: bool = False  # trained to its end: its model holds the weights it keeps
    kept_test_read: bool = False  # the test set was read at its end, for its kept epoch


def fit(
    members: list[Member],
    splits: Splits,
    epochs: int,
    batch_size: int,
    progress: bool = True,
    augment: Callable[..., torch.Tensor] | None = None,
    patience: int = 0,
    dtype: torch.dtype = torch.float32,
    test_each_epoch: bool = True,
) -> None:
    """Train the members together for up to `epochs`, evaluating after each; each member's
    `on_epoch` gets its history so far after every epoch (and may raise to stop it, as a pruned
    trial does). Each ends `finished`, with its history and its model holding the weights it
    keeps, or `ended` early with what stopped it.

    With a validation split, a member stops once `patience` epochs (0 = never) pass without a
    better validation accuracy, and ends with the weights of its best epoch (`best_epoch`);
    without one, with the last epoch's. `dtype` is the training passes' precision
    (precision.py); evaluation is always float32. A member with `resume` goes on after that
    state's epochs, which its `on_epoch` gets again first; members that share a stack were
    stopped after the same epoch (run.py decides what stacks).

    With `test_each_epoch` False and a validation split, the test set is read once per member,
    for the weights it keeps, when it ends (trained to its end, stopped by an Exception from its
    callback, diverged): the kept epoch's `test_accuracy`; the other epochs have None. What is
    no Exception (Ctrl-C; SystemExit, as Ray Tune stops a trial) ends the loop at once, unread:
    a caller that stops a run that way may kill it moments later. Evaluation is a fifth to a third
    of a small model's epoch: a search whose objective is the validation accuracy saves it.
    """
    test_each_epoch = test_each_epoch or splits.val is None
    for member in members:
        use_dropout_stream(member.model, member.streams.dropout)
        if member.resume is not None:
            restore(member.resume, member)
    computation = computation_of([m.model for m in members], [m.optimizer for m in members],
                                 [m.streams.dropout for m in members])
    shared = members[0].streams  # the order and the augmentation: the same in every member
    for member in members[1:]:  # so each member's checkpoint records where they are
        member.streams = RandomStreams(shared.order, shared.augment, member.streams.dropout)
    for member in members:  # the epochs it goes on after, told again
        for done in range(1, len(member.history) + 1):
            if not _tell(member, member.history[:done]):
                read_kept_test(member, splits.test)
                break
    active = [m for m in members if m.ended is None]
    if active and len(active) < len(members):
        computation.keep([i for i, m in enumerate(members) if m.ended is None])
    for epoch in range(len(members[0].history) + 1, epochs + 1):
        if not active:
            return
        start = time.perf_counter()
        losses, accuracies, diverged = train_epoch(
            computation, [m.loss_fn for m in active], splits.train, batch_size, shared,
            description=f"epoch {epoch}/{epochs}", progress=progress, augment=augment,
            schedules=[m.schedule for m in active], dtype=dtype)
        for member in active:
            if member.schedule and not member.schedule.per_batch:
                member.schedule.scheduler.step()
        epoch_time = time.perf_counter() - start
        val = evaluate(computation, splits.val) if splits.val is not None else None
        test = evaluate(computation, splits.test) if test_each_epoch else [None] * len(active)
        done = []
        for i, member in enumerate(active):
            if i in diverged:
                member.ended = diverged[i]
                done.append(i)
                read_kept_test(member, splits.test)  # its best epoch's weights, before the NaN
                continue
            member.history.append(EpochMetrics(
                epoch=epoch, train_loss=losses[i], train_accuracy=accuracies[i],
                val_accuracy=None if val is None else val[i], test_accuracy=test[i],
                epoch_time_s=epoch_time))
            if val is not None and best_epoch(member.history) is member.history[-1]:
                member.best_weights = computation.weights_of(i)
            if not _tell(member, member.history):
                done.append(i)
                read_kept_test(member, splits.test)
            elif run_ends_after(member.history, epochs, patience):
                _finish(computation, i, member)
                done.append(i)
                read_kept_test(member, splits.test)
            elif member.checkpoints is not None:
                member.checkpoints.save(state_after(computation, i, member, dtype))
        if done:
            active = [m for i, m in enumerate(active) if i not in done]
            if active:
                computation.keep([i for i in range(computation.size) if i not in done])
    for i, member in enumerate(active):
        _finish(computation, i, member)
        read_kept_test(member, splits.test)


def fit_model(model: nn.Module, optimizer: torch.optim.Optimizer, splits: Splits, epochs: int,
              batch_size: int, seed: int = 0,
              on_epoch: Callable[[list[EpochMetrics]], None] = lambda history: None,
              loss_fn: LossFn = nn.functional.cross_entropy, schedule: Schedule | None = None,
              progress: bool = False, **options: Any) -> list[EpochMetrics]:
    """One model through `fit`, its streams from `seed` (tests, benchmarks): its history;
    raises what ended it (a DivergedError, what `on_epoch` raised)."""
    member = Member(model, optimizer, RandomStreams.from_seed(seed, splits.train.labels.device),
                    on_epoch, loss_fn, schedule)
    fit([member], splits, epochs, batch_size, progress=progress, **options)
    if member.ended is not None:
        raise member.ended
    return member.history


def train_model_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, train: Split,
                      batch_size: int, seed: int = 0,
                      loss_fn: LossFn = nn.functional.cross_entropy,
                      schedule: Schedule | None = None, **options: Any) -> tuple[float, float]:
    """One epoch of one model, its streams from `seed`, as `fit` trains it (tests, benchmarks):
    its mean loss and accuracy; raises DivergedError."""
    streams = RandomStreams.from_seed(seed, train.labels.device)
    use_dropout_stream(model, streams.dropout)
    losses, accuracies, diverged = train_epoch(SingleModel(model, optimizer), [loss_fn], train,
                                               batch_size, streams, schedules=[schedule],
                                               **options)
    if diverged:
        raise diverged[0]
    return losses[0], accuracies[0]


def _tell(member: Member, history: list[EpochMetrics]) -> bool:
    """Give the member's callback its history; False when it stopped the member."""
    try:
        member.on_epoch(history)
    except Exception as error:  # pruned, or the budget: this member stops, the others go on
        member.ended = error
        return False
    return True


def _finish(computation: Computation, index: int, member: Member) -> None:
    """Put the member's kept weights into its own model."""
    computation.export(index)
    kept = best_epoch(member.history)
    if member.best_weights is not None and kept is not member.history[-1]:
        member.model.load_state_dict(member.best_weights)
    member.finished = True


def read_kept_test(member: Member, test: Split) -> None:
    """Once a member has ended: read the test set for the weights it keeps (its best validation
    epoch's, which its model holds from then on) and record it on that epoch, unless that epoch
    has it (read after every epoch; a resume that changed the objective replays epochs without)."""
    if member.best_weights is None:
        return  # no validation split (the test set was read every epoch), or no epoch ended
    kept = best_epoch(member.history)
    if kept.test_accuracy is None:
        member.model.load_state_dict(member.best_weights)
        kept.test_accuracy = evaluate(member.model, test)[0]
        member.kept_test_read = True


def state_after(computation: Computation, index: int, member: Member, dtype: torch.dtype
                ) -> dict:
    """What a member needs to go on after its last epoch as if it had never stopped: its weights,
    its optimizer's and schedule's state, where its random streams are (the data order's, the
    augmentation's, its dropout's, and torch's global one), its history, and its best epoch's
    weights. It reads as a single run's: a stack's member goes on alone from it."""
    computation.export(index)
    history = member.history
    return {"epoch": history[-1].epoch, "model": member.model.state_dict(),
            "optimizer": member.optimizer.state_dict(),
            "scheduler": member.schedule.scheduler.state_dict() if member.schedule else None,
            **member.streams.state(), "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "history": [vars(m) for m in history], "best_weights": member.best_weights,
            "dtype": str(dtype).removeprefix("torch.")}


def restore(state: dict, member: Member) -> None:
    """Put a checkpoint's state back into the member, before its stack is built."""
    member.model.load_state_dict(state["model"])
    member.optimizer.load_state_dict(state["optimizer"])
    if member.schedule is not None and state["scheduler"] is not None:
        member.schedule.scheduler.load_state_dict(state["scheduler"])
    member.streams.restore(state)
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    member.history = [EpochMetrics(**m) for m in state["history"]]
    member.best_weights = state["best_weights"]


def run_ends_after(history: list[EpochMetrics], epochs: int, patience: int) -> bool:
    """True when `fit` trains no epoch after the history's last: it was epoch `epochs`, or
    `patience` epochs (0 = never) have passed without a better validation accuracy. A caller
    of `on_epoch` that reports to a pruner tells it so: a run that ends anyway is not pruned."""
    epoch = history[-1].epoch
    return epoch >= epochs or bool(patience and epoch - best_epoch(history).epoch >= patience)


def best_epoch(history: list[EpochMetrics]) -> EpochMetrics:
    """The epoch whose weights a run keeps: the best validation accuracy (the first epoch that
    reached it), or the last epoch when there is no validation split: the test set never
    chooses."""
    if history[-1].val_accuracy is None:
        return history[-1]
    return max(history, key=lambda m: m.val_accuracy)


def train_epoch(
    computation: Computation,
    loss_fns: list[LossFn],
    train: Split,
    batch_size: int,
    streams: RandomStreams,
    description: str = "train",
    progress: bool = False,
    augment: Callable[..., torch.Tensor] | None = None,
    schedules: list[Schedule | None] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[list[float], list[float], dict[int, DivergedError]]:
    """One pass over `train` in a shuffled order for every member of `computation`: each one's
    mean loss and accuracy (on the augmented images when `augment` is given), and the members
    whose loss diverged, by index, with the error each ended with (a diverged member trains the
    epoch out with the others: no weight is shared)."""
    computation.train()
    n = len(train)
    device = train.labels.device
    order = torch.randperm(n, generator=streams.order).to(device)
    bounds = batch_bounds(n, batch_size)
    per_batch = [s for s in schedules or [] if s and s.per_batch]
    loss_of = members_loss(loss_fns)
    # Each batch's losses and predictions are kept on the device and read once the epoch ends:
    # a sum or a check per batch would add operations to every step of a small model.
    batch_losses = torch.empty(len(bounds), computation.size, device=device)
    predictions = torch.empty(computation.size, n, dtype=torch.int64, device=device)
    for i, (start, end) in enumerate(tqdm(bounds, desc=description, unit="batch",
                                          disable=not progress, leave=False, mininterval=0.5)):
        # Gathering each batch as it is needed measured faster than one shuffled copy of the
        # whole split per epoch (0.22 s against 0.27 s an epoch at batch 1024): it stays in
        # cache; index_select is the faster gather (6 us against 13 us at batch 64).
        batch = order[start:end]
        x, y = train.inputs.index_select(0, batch), train.labels.index_select(0, batch)
        if augment is not None:
            x = augment(x, streams.augment)
        with autocast(x.device, dtype):
            logits = computation(x)
        losses = loss_of(logits.float(), y)  # the loss and its gradient's start in float32
        computation.zero_grad()
        # the members share no weight: the sum gives each its own gradient
        (losses if computation.size == 1 else losses.sum()).backward()
        computation.step()
        for schedule in per_batch:
            schedule.scheduler.step()
        batch_losses[i] = losses.detach()
        predictions[:, start:end] = logits.detach().argmax(-1)
    sizes = torch.tensor([end - start for start, end in bounds], device=device)
    mean_losses = (batch_losses.double() * sizes.unsqueeze(1)).sum(0) / n
    correct = (predictions == train.labels.index_select(0, order)).sum(1)
    finite = torch.isfinite(batch_losses)
    diverged = {}
    for member in torch.nonzero(~finite.all(0)).flatten().tolist():
        first = int(torch.nonzero(~finite[:, member])[0])
        diverged[member] = _raised(DivergedError(
            f"training loss is {batch_losses[first, member].item()} at sample {bounds[first][0]} "
            "of the epoch"))
    return mean_losses.tolist(), (correct.double() / n).tolist(), diverged


def members_loss(loss_fns: list[LossFn]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(members, batch, classes) logits and the labels -> each member's loss, (members,): each
    computed by its own loss module, as its single run computes it; cross-entropies that differ
    in label smoothing only are one computation. One member: its loss module itself, on its
    (batch, classes) logits."""
    if len(loss_fns) == 1:
        return loss_fns[0]
    smoothing = [_plain_cross_entropy_smoothing(fn) for fn in loss_fns]
    if None not in smoothing:
        rates: list[torch.Tensor] = []  # made once, on the logits' device

        def stacked(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            if not rates:
                rates.append(torch.tensor(smoothing, device=logits.device))
            return stacked_cross_entropy(logits, labels, rates[0])

        return stacked
    return lambda logits, labels: torch.stack(
        [fn(member_logits, labels) for fn, member_logits in zip(loss_fns, logits)])


def _plain_cross_entropy_smoothing(loss_fn: LossFn) -> float | None:
    """A CrossEntropyLoss's label smoothing when it has no other setting than that; else None."""
    if type(loss_fn) is nn.CrossEntropyLoss and loss_fn.weight is None \
            and loss_fn.reduction == "mean" and loss_fn.ignore_index == -100:
        return float(loss_fn.label_smoothing)
    return None


def stacked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                          label_smoothing: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy, with its own label smoothing: (members,), as
    `F.cross_entropy(logits[k], labels, label_smoothing=s[k])` computes it."""
    log_probs = nn.functional.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(-1, labels.expand(logits.shape[0], -1).unsqueeze(-1)).squeeze(-1)
    smooth = -log_probs.mean(-1)
    return ((1 - label_smoothing).unsqueeze(1) * nll
            + label_smoothing.unsqueeze(1) * smooth).mean(1)


def _raised(error: Exception) -> Exception:
    """`error` with the traceback of where it was found, for the run's status.json."""
    try:
        raise error
    except Exception as raised:
        return raised


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """The (start, end) of each batch of an epoch over `n` samples. A last batch of a single
    sample joins the one before it: BatchNorm cannot normalise one sample (model.norm=batch)."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, [*starts[1:], n]))


def accuracy(model: nn.Module, split: Split) -> float:
    """One model's accuracy on `split`."""
    return evaluate(model, split)[0]


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, batch_size: int = 8192) -> list[float]:
    """Each member's accuracy on `split`, in large batches without autograd, in float32.
    `model` gives (members, batch, classes) logits (a Computation) or (batch, classes) (an
    MLP, one member)."""
    model.eval()
    correct = None
    for i in range(0, len(split), batch_size):
        logits = model(split.inputs[i:i + batch_size])
        hits = (logits.argmax(-1) == split.labels[i:i + batch_size]).sum(-1)
        correct = hits if correct is None else correct + hits
    return (correct.double() / len(split)).reshape(-1).tolist()
