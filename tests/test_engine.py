"""The fast training path learns exactly what the course's DataLoader loop learns."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from mlp_sweep.training.data import Split, Splits, load_splits
from mlp_sweep.training.engine import (DivergedError, EpochMetrics, Member, RandomStreams, accuracy,
                                       batch_bounds, best_epoch, fit, fit_model, train_model_epoch)
from mlp_sweep.training.model import MLP

from conftest import compose_config

SEED = 3


def seed_model() -> nn.Module:
    torch.manual_seed(SEED)
    return MLP((1, 28, 28), [128, 64], 10)


def test_fast_path_and_dataloader_give_the_same_losses_on_the_same_batches(mnist_root):
    n = 64 * 12 + 17  # a partial last batch, as DataLoader's drop_last=False gives
    course = datasets.MNIST(mnist_root, train=True, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]))
    # train_epoch shuffles with torch.randperm(n, generator). DataLoader(shuffle=True) draws its
    # workers' seeds from the same generator before its sampler does, so it would visit another
    # order: the reference gets train_epoch's order explicitly, as its sampler.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED)).tolist()
    loader = DataLoader(Subset(course, range(n)), batch_size=64, sampler=order)
    reference = seed_model()
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    reference_losses = []
    for images, labels in loader:
        loss = nn.CrossEntropyLoss()(reference(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        reference_losses.append(loss.item())

    train = load_splits(compose_config(f"dataset.root={mnist_root}").dataset).train.head(n)
    fast = seed_model()
    logits_per_batch = []
    hook = fast.register_forward_hook(lambda module, inputs, output: logits_per_batch.append(output))
    train_model_epoch(fast, torch.optim.Adam(fast.parameters(), lr=1e-3), train, 64, SEED)
    hook.remove()
    labels = train.labels[order]
    fast_losses = [nn.functional.cross_entropy(logits, labels[i * 64:(i + 1) * 64]).item()
                   for i, logits in enumerate(logits_per_batch)]

    assert len(fast_losses) == len(reference_losses) == 13
    assert fast_losses == pytest.approx(reference_losses, rel=1e-5, abs=1e-6)
    for a, b in zip(reference.parameters(), fast.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_evaluate_matches_the_course_torch_max_loop(mnist_root):
    model = seed_model()
    test = load_splits(compose_config(f"dataset.root={mnist_root}").dataset).test
    course = datasets.MNIST(mnist_root, train=False, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]))
    correct = total = 0
    with torch.no_grad():
        for images, labels in DataLoader(course, batch_size=64, shuffle=False):
            _, predicted = torch.max(model(images).data, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    assert accuracy(model, test) == correct / total


def test_training_stops_at_the_first_non_finite_loss():
    split = Split(torch.randn(256, 1, 4, 4), torch.randint(0, 3, (256,)))
    model = MLP((1, 4, 4), [8], 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=math.inf)
    with pytest.raises(DivergedError, match="training loss is nan at sample 64"):
        train_model_epoch(model, optimizer, split, 64, 0)


def test_fit_reports_every_epoch_and_learns():
    torch.manual_seed(0)
    inputs = torch.randn(512, 1, 2, 2)
    split = Split(inputs, (inputs.flatten(1).sum(1) > 0).long())
    model = MLP((1, 2, 2), [16], 2)
    seen = []
    history = fit_model(model, torch.optim.Adam(model.parameters(), lr=1e-2), Splits(split, split, split),
                  epochs=3, batch_size=32, seed=0,
                  on_epoch=lambda so_far: seen.append(list(so_far)), progress=False)
    assert [[m.epoch for m in so_far] for so_far in seen] == [[1], [1, 2], [1, 2, 3]]
    assert seen[-1] == history
    assert history[-1].train_loss < history[0].train_loss
    assert history[-1].val_accuracy == history[-1].test_accuracy > 0.9


def separable(n=512, seed=0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 1, 2, 2, generator=generator)
    return Split(inputs, (inputs.flatten(1).sum(1) > 0).long())


def test_the_model_ends_with_its_best_validation_epochs_weights():
    torch.manual_seed(0)
    train, val = separable(seed=0), separable(seed=1)
    model = MLP((1, 2, 2), [16], 2)
    weights = {}

    def remember(history):
        weights[history[-1].epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    # A learning rate that makes the later epochs worse than an early one.
    history = fit_model(model, torch.optim.SGD(model.parameters(), lr=3.0), Splits(train, val, val),
                  epochs=6, batch_size=32, seed=0,
                  on_epoch=remember, progress=False)
    best = best_epoch(history)
    assert best.val_accuracy == max(m.val_accuracy for m in history)
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[best.epoch][key])
    assert accuracy(model, val) == best.val_accuracy


def test_without_test_each_epoch_the_test_set_is_read_once_for_the_kept_weights():
    torch.manual_seed(0)
    train, val, test = separable(seed=0), separable(seed=1), separable(seed=2)
    model = MLP((1, 2, 2), [16], 2)
    # The same lr as above: a later epoch is worse, so the kept epoch is not the last.
    history = fit_model(model, torch.optim.SGD(model.parameters(), lr=3.0), Splits(train, val, test),
                        epochs=6, batch_size=32, seed=0, test_each_epoch=False)
    kept = best_epoch(history)
    assert kept is not history[-1]
    assert [m.test_accuracy is None for m in history] == [m is not kept for m in history]
    assert kept.test_accuracy == accuracy(model, test)  # the model holds the kept weights


def test_a_run_stopped_by_its_callback_gets_its_kept_epochs_test_accuracy():
    torch.manual_seed(0)
    train, val, test = separable(seed=0), separable(seed=1), separable(seed=2)
    model = MLP((1, 2, 2), [16], 2)

    def prune_after_three(history):
        if len(history) == 3:
            raise RuntimeError("pruned")

    member = Member(model, torch.optim.SGD(model.parameters(), lr=3.0),
                    RandomStreams.from_seed(0, torch.device("cpu")), prune_after_three)
    fit([member], Splits(train, val, test), epochs=6, batch_size=32, progress=False,
        test_each_epoch=False)
    assert str(member.ended) == "pruned" and len(member.history) == 3
    kept = best_epoch(member.history)
    reference = MLP((1, 2, 2), [16], 2)
    reference.load_state_dict(member.best_weights)
    assert kept.test_accuracy == accuracy(reference, test)
    assert sum(m.test_accuracy is not None for m in member.history) == 1


def test_a_diverged_run_gets_the_test_accuracy_of_its_best_epoch_before_the_nan():
    torch.manual_seed(0)
    train, val, test = separable(seed=0), separable(seed=1), separable(seed=2)
    model = MLP((1, 2, 2), [16], 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def blow_up_after_two(history):
        if len(history) == 2:
            optimizer.param_groups[0]["lr"] = 1e38

    member = Member(model, optimizer, RandomStreams.from_seed(0, torch.device("cpu")),
                    blow_up_after_two)
    fit([member], Splits(train, val, test), epochs=6, batch_size=32, progress=False,
        test_each_epoch=False)
    assert isinstance(member.ended, DivergedError) and len(member.history) == 2
    reference = MLP((1, 2, 2), [16], 2)
    reference.load_state_dict(member.best_weights)
    assert best_epoch(member.history).test_accuracy == accuracy(reference, test) > 0.5


def test_without_validation_the_test_set_is_read_every_epoch_whatever_is_asked():
    torch.manual_seed(0)
    split = separable()
    model = MLP((1, 2, 2), [16], 2)
    history = fit_model(model, torch.optim.SGD(model.parameters(), lr=0.1), Splits(split, None, split),
                        epochs=3, batch_size=64, seed=0, test_each_epoch=False)
    assert all(m.test_accuracy is not None for m in history)


def test_without_validation_the_last_epoch_is_kept_and_the_test_set_never_chooses():
    history = [EpochMetrics(1, 0.5, 0.8, None, 0.99, 1.0), EpochMetrics(2, 0.4, 0.9, None, 0.90, 1.0)]
    assert best_epoch(history).epoch == 2


def test_early_stopping_waits_patience_epochs_after_the_best():
    torch.manual_seed(0)
    split = separable()
    model = MLP((1, 2, 2), [16], 2)
    # lr 0: nothing changes, so epoch 1 stays the best and the run stops `patience` epochs later.
    history = fit_model(model, torch.optim.SGD(model.parameters(), lr=0.0), Splits(split, split, split),
                  epochs=20, batch_size=64, seed=0,
                  progress=False, patience=3)
    assert [m.epoch for m in history] == [1, 2, 3, 4]
    assert best_epoch(history).epoch == 1


def test_label_smoothing_and_augment_reach_the_training_step():
    torch.manual_seed(0)
    split = separable(64)
    seen = []

    def augment(x, generator):
        seen.append(x.shape[0])
        return x

    model = MLP((1, 2, 2), [4], 2)
    loss_plain, _ = train_model_epoch(model, torch.optim.SGD(model.parameters(), lr=0.0), split, 32)
    loss_smooth, _ = train_model_epoch(model, torch.optim.SGD(model.parameters(), lr=0.0), split, 32,
                                       augment=augment,
                                       loss_fn=nn.CrossEntropyLoss(label_smoothing=0.5))
    assert seen == [32, 32]
    assert loss_smooth != pytest.approx(loss_plain)


@pytest.mark.parametrize("n, batch_size, bounds", [
    (128, 64, [(0, 64), (64, 128)]),
    (130, 64, [(0, 64), (64, 128), (128, 130)]),
    (129, 64, [(0, 64), (64, 129)]),  # a lone last sample joins the batch before it
    (1, 64, [(0, 1)]),
])
def test_batch_bounds_cover_every_sample_once(n, batch_size, bounds):
    assert batch_bounds(n, batch_size) == bounds


def test_batch_norm_trains_when_the_last_batch_would_hold_one_sample():
    torch.manual_seed(0)
    model = MLP((1, 2, 2), [16], 2, norm="batch")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = separable(n=129)  # 64 + 64 + 1
    history = fit_model(model, optimizer, Splits(data, None, separable(n=256, seed=1)), epochs=2,
                  batch_size=64, seed=0, progress=False)
    assert len(history) == 2 and math.isfinite(history[-1].train_loss)
