"""The fast training path learns exactly what the course's DataLoader loop learns."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from mlp_sweep.data import Split, Splits, load_splits
from mlp_sweep.engine import DivergedError, evaluate, fit, train_epoch
from mlp_sweep.model import MLP

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
    train_epoch(fast, torch.optim.Adam(fast.parameters(), lr=1e-3), train, 64,
                torch.Generator().manual_seed(SEED))
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
    assert evaluate(model, test) == correct / total


def test_training_stops_at_the_first_non_finite_loss():
    split = Split(torch.randn(256, 1, 4, 4), torch.randint(0, 3, (256,)))
    model = MLP((1, 4, 4), [8], 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=math.inf)
    with pytest.raises(DivergedError, match="training loss is nan at sample 64"):
        train_epoch(model, optimizer, split, 64, torch.Generator().manual_seed(0))


def test_fit_reports_every_epoch_and_learns():
    torch.manual_seed(0)
    inputs = torch.randn(512, 1, 2, 2)
    split = Split(inputs, (inputs.flatten(1).sum(1) > 0).long())
    model = MLP((1, 2, 2), [16], 2)
    seen = []
    history = fit(model, torch.optim.Adam(model.parameters(), lr=1e-2), Splits(split, split, split),
                  epochs=3, batch_size=32, generator=torch.Generator().manual_seed(0),
                  on_epoch=lambda so_far: seen.append(list(so_far)), progress=False)
    assert [[m.epoch for m in so_far] for so_far in seen] == [[1], [1, 2], [1, 2, 3]]
    assert seen[-1] == history
    assert history[-1].train_loss < history[0].train_loss
    assert history[-1].val_accuracy == history[-1].test_accuracy > 0.9
