"""IDX files, the on-disk format of MNIST and Fashion-MNIST that torchvision reads."""

import hashlib
from pathlib import Path

import numpy as np

from mlp_sweep.errors import DataError
from mlp_sweep.files import replace_atomically

IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array of images (N, H, W) or labels (N,), atomically."""
    magic = {3: IMAGES_MAGIC, 1: LABELS_MAGIC}[array.ndim]
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    body = np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    replace_atomically(path, lambda tmp: tmp.write_bytes(header + body))


def check_idx(path: Path) -> None:
    """Raise DataError naming the file when its size disagrees with its own header."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise DataError(f"{path} is truncated: {size} bytes, shorter than an IDX header")
    magic = int.from_bytes(head[:4], "big")
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        raise DataError(f"{path} is not an IDX file of unsigned bytes (magic number {magic})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if size != expected:
        raise DataError(
            f"{path} is truncated or corrupt: {size} bytes, its header {dims} needs {expected}"
        )


def md5_of(path: Path) -> str:
    """MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
