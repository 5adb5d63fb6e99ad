import hashlib
import logging
import pickle
import shutil

import numpy as np
import pytest
import torch
from torchvision import datasets, transforms

from mlp_sweep.errors import DataError
from mlp_sweep.training import data, mnist_package_index
from mlp_sweep.training.idx import check_idx, md5_of, write_idx

from conftest import compose_config, write_fashion_mnist

RAW_NAMES = list(mnist_package_index.RAW_MD5)


def dataset_cfg(root, *overrides):
    return compose_config(f"dataset.root={root}", *overrides).dataset


@pytest.fixture
def fresh_memory(monkeypatch):
    """Forget the tensors this process already loaded, so the disk path runs."""
    monkeypatch.setattr(data, "_in_memory", {})


def copy_mnist_raw(mnist_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(mnist_root / "MNIST" / "raw", root / "MNIST" / "raw")
    return root


def test_package_index_copy_becomes_the_original_mnist_files(mnist_root):
    raw = mnist_root / "MNIST" / "raw"
    assert {name: md5_of(raw / name) for name in RAW_NAMES} == mnist_package_index.RAW_MD5


def test_mnist_splits_are_whole_normalised_tensors(mnist_root):
    splits = data.load_splits(dataset_cfg(mnist_root))
    assert splits.train.inputs.shape == (60000, 1, 28, 28) and splits.train.inputs.dtype == torch.float32
    assert splits.test.inputs.shape == (10000, 1, 28, 28)
    assert splits.val is None
    assert splits.train.labels.dtype == torch.int64
    assert set(splits.train.labels.unique().tolist()) == set(range(10))
    assert splits.train.inputs.min() == -1 and splits.train.inputs.max() == 1


def test_tensors_equal_torchvisions_totensor_and_normalize(mnist_root):
    """The fast path sees exactly the inputs the course's transform pipeline produces."""
    splits = data.load_splits(dataset_cfg(mnist_root))
    reference = datasets.MNIST(mnist_root, train=False, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]))
    for index in (0, 1, 4321, 9999):
        image, label = reference[index]
        assert torch.equal(splits.test.inputs[index], image)
        assert splits.test.labels[index].item() == label


def test_second_load_reads_the_prepared_cache(mnist_root, fresh_memory, caplog):
    assert (mnist_root / "prepared" / f"mnist-v{data.CACHE_VERSION}.pt").is_file()
    with caplog.at_level(logging.INFO, logger="mlp_sweep.training.data"):
        splits = data.load_splits(dataset_cfg(mnist_root))
    assert "tensors from cache" in caplog.text
    assert len(splits.train) == 60000


def test_limits_take_the_first_samples(mnist_root):
    full = data.load_splits(dataset_cfg(mnist_root))
    small = data.load_splits(dataset_cfg(mnist_root, "dataset.train_limit=100", "dataset.test_limit=50"))
    assert (len(small.train), len(small.test)) == (100, 50)
    assert torch.equal(small.train.inputs, full.train.inputs[:100])


def test_validation_split_defaults_to_the_last_training_images(mnist_root):
    full = data.load_splits(dataset_cfg(mnist_root))
    splits = data.load_splits(dataset_cfg(mnist_root, "dataset.val_size=10000"))
    assert (len(splits.train), len(splits.val)) == (50000, 10000)
    assert torch.equal(splits.val.inputs, full.train.inputs[50000:])
    assert torch.equal(splits.train.labels, full.train.labels[:50000])


def test_seeded_validation_split_is_random_disjoint_and_repeatable(mnist_root):
    a = data.load_splits(dataset_cfg(mnist_root, "dataset.val_size=500", "dataset.val_seed=7"))
    b = data.load_splits(dataset_cfg(mnist_root, "dataset.val_size=500", "dataset.val_seed=7"))
    assert torch.equal(a.val.inputs, b.val.inputs)
    full = data.load_splits(dataset_cfg(mnist_root)).train
    assert not torch.equal(a.val.inputs, full.inputs[-500:])
    assert len(a.train) + len(a.val) == len(full)


def test_truncated_mnist_file_is_named_and_kept(mnist_root, tmp_path, fresh_memory):
    root = copy_mnist_raw(mnist_root, tmp_path)
    victim = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    with victim.open("r+b") as f:
        f.truncate(1_000_000)
    with pytest.raises(DataError, match=f"{victim} is truncated"):
        data.load_splits(dataset_cfg(root))
    assert victim.stat().st_size == 1_000_000
    assert not (root / "prepared").exists()


def test_mnist_file_failing_its_checksum_is_named_and_kept(mnist_root, tmp_path, fresh_memory):
    root = copy_mnist_raw(mnist_root, tmp_path)
    victim = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    content = bytearray(victim.read_bytes())
    content[100] = (content[100] + 1) % 10
    victim.write_bytes(content)
    with pytest.raises(DataError, match=f"{victim} fails its checksum: md5 [0-9a-f]+, expected 27ae3e4e"):
        data.load_splits(dataset_cfg(root))
    assert victim.read_bytes() == content


def test_data_root_that_cannot_be_written_is_refused(tmp_path, fresh_memory):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match=f"dataset.root='{blocker}/data' is not writable"):
        data.load_splits(dataset_cfg(blocker / "data"))
    assert blocker.read_text() == "not a folder"


def test_idx_round_trip_and_truncation(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "images", images)
    check_idx(tmp_path / "images")
    assert (tmp_path / "images").read_bytes()[16:] == images.tobytes()
    with (tmp_path / "images").open("r+b") as f:
        f.truncate(20)
    with pytest.raises(DataError, match="images is truncated or corrupt: 20 bytes"):
        check_idx(tmp_path / "images")


def test_package_index_pickle_may_only_build_numpy_arrays():
    class Boom:
        def __reduce__(self):
            return (print, ("ran",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        mnist_package_index._NumpyArraysOnly(__import__("io").BytesIO(pickle.dumps(Boom()))).load()


def test_fashion_mnist_loads_through_torchvision_from_idx_files(tmp_path, fresh_memory):
    train = write_fashion_mnist(tmp_path, 30, 12)

    cfg = compose_config("dataset=fashion_mnist", f"dataset.root={tmp_path}").dataset
    splits = data.load_splits(cfg)
    assert splits.train.inputs.shape == (30, 1, 28, 28) and len(splits.test) == 12
    expected = (torch.from_numpy(train[3]).float() / 255 - cfg.mean[0]) / cfg.std[0]
    assert torch.allclose(splits.train.inputs[3, 0], expected)
    assert splits.train.labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def write_cifar10(root, rng):
    """Small CIFAR-10 batch files in the python-pickle format torchvision reads."""
    folder = root / datasets.CIFAR10.base_folder
    folder.mkdir(parents=True)
    names = [name for name, _ in datasets.CIFAR10.train_list + datasets.CIFAR10.test_list]
    batches = {}
    for name in names:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, 4).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
        batches[name] = batch
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    return folder, batches


@pytest.fixture
def cifar_checksums_of_written_files(monkeypatch):
    """Point torchvision's CIFAR-10 MD5 table at the files the test writes."""
    def use(folder):
        md5 = lambda name: hashlib.md5((folder / name).read_bytes()).hexdigest()  # noqa: E731
        monkeypatch.setattr(datasets.CIFAR10, "train_list",
                            [[n, md5(n)] for n, _ in datasets.CIFAR10.train_list])
        monkeypatch.setattr(datasets.CIFAR10, "test_list",
                            [[n, md5(n)] for n, _ in datasets.CIFAR10.test_list])
        monkeypatch.setitem(datasets.CIFAR10.meta, "md5", md5("batches.meta"))
    return use


def test_cifar10_loads_through_torchvision_as_channels_first(tmp_path, fresh_memory,
                                                             cifar_checksums_of_written_files):
    folder, batches = write_cifar10(tmp_path, np.random.default_rng(1))
    cifar_checksums_of_written_files(folder)
    cfg = compose_config("dataset=cifar10", f"dataset.root={tmp_path}").dataset
    splits = data.load_splits(cfg)
    assert splits.train.inputs.shape == (20, 3, 32, 32) and splits.test.inputs.shape == (4, 3, 32, 32)
    first = torch.from_numpy(batches["data_batch_1"]["data"][0].reshape(3, 32, 32)).float() / 255
    mean, std = torch.tensor(list(cfg.mean)).view(3, 1, 1), torch.tensor(list(cfg.std)).view(3, 1, 1)
    assert torch.allclose(splits.train.inputs[0], (first - mean) / std)
    assert splits.test.labels.tolist() == batches["test_batch"]["labels"]


def test_cifar10_file_failing_its_checksum_is_named_and_kept(tmp_path, fresh_memory,
                                                             cifar_checksums_of_written_files):
    folder, _ = write_cifar10(tmp_path, np.random.default_rng(2))
    cifar_checksums_of_written_files(folder)
    victim = folder / "data_batch_3"
    victim.write_bytes(victim.read_bytes()[:100])
    cfg = compose_config("dataset=cifar10", f"dataset.root={tmp_path}").dataset
    with pytest.raises(DataError, match=f"{victim} is missing or fails its checksum"):
        data.load_splits(cfg)
    assert victim.stat().st_size == 100
