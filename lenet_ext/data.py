"""MNIST and Fashion-MNIST from IDX files, without torchvision.

``load("mnist", root, train=True)`` returns ``(images, labels)``: float32 images (N, 1, H, W) with
pixels scaled to [0, 1] and, with ``normalize=True`` (the default), standardised by the full public
training set's pixel mean and standard deviation (MNIST 0.1307 and 0.3081, Fashion-MNIST 0.2860 and
0.3530); int64 labels (N,). ``pad_to=32`` zero-pads the 28x28 digits to the
32x32 that LeNet expects (the padding is background: it is added before normalisation).

Files are looked for in ``root`` and in torchvision's layout ``root/MNIST/raw`` (``FashionMNIST/raw``),
gzip-compressed or raw, spelled ``t10k-images-idx3-ubyte`` or ``t10k-images.idx3-ubyte``. Missing
files are downloaded into torchvision's layout (checksums verified) unless ``download=False``.
Anything else — a missing, corrupt, truncated or empty file, images that are not 28x28, a folder that
cannot be read — raises ``DataError`` saying which file and why.

``BUNDLED_MNIST`` is a folder inside the package holding real MNIST digits, 4,000 for training and
1,000 for test (400 and 100 per class), with their licence note: ``load("mnist", BUNDLED_MNIST)``
works offline.
"""
import gzip
import hashlib
import urllib.request
import zlib
from pathlib import Path
from typing import Optional

import torch

from .checkpoint import write_atomically


BUNDLED_MNIST = Path(__file__).with_name("mnist_5k")


class DataError(RuntimeError):
    """A data set that is missing and could not be downloaded, or a file that is not valid IDX."""


DATASETS = {
    "mnist": {
        "folder": "MNIST",
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                    "http://yann.lecun.com/exdb/mnist/"],
        "md5": {"train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c"},
        "mean_std": (0.1307, 0.3081),
    },
    "fashion-mnist": {
        "folder": "FashionMNIST",
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "md5": {"train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310"},
        "mean_std": (0.2860, 0.3530),
    },
}

IMAGE_SIZE = (28, 28)  # MNIST's and Fashion-MNIST's: the networks' first layers are sized for it
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path, ndim: int) -> torch.Tensor:
    """Reads an unsigned-byte IDX file (gzip or raw) holding an ``ndim``-dimensional array."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if data[:2] == _GZIP_MAGIC:
            data = gzip.decompress(data)
    except EOFError as error:
        raise DataError(f"{path}: truncated: the gzip stream ends early") from error
    except (OSError, zlib.error) as error:
        raise DataError(f"{path}: cannot read: {error}") from error
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated: {len(data)} bytes, shorter than an IDX header")
    magic = data[:4]
    if magic != bytes([0, 0, _UBYTE, ndim]):
        raise DataError(f"{path}: not an IDX file of {ndim}-d unsigned bytes: magic number "
                        f"{magic.hex()}, expected {bytes([0, 0, _UBYTE, ndim]).hex()}")
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + torch.Size(shape).numel()
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "corrupt"
        raise DataError(f"{path}: {kind}: {len(data)} bytes, expected {expected} for shape {shape}")
    if 0 in shape:
        raise DataError(f"{path}: empty: its header says shape {shape}")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def _find(root: Path, folder: str, name: str) -> Optional[Path]:
    spellings = [name, name.replace("-idx", ".idx")]  # t10k-images-idx3-ubyte, t10k-images.idx3-ubyte
    for directory in (root, root / folder / "raw"):
        for spelling in spellings:
            for suffix in ("", ".gz"):
                try:
                    if (directory / (spelling + suffix)).is_file():
                        return directory / (spelling + suffix)
                except OSError as error:  # a folder we may not read
                    raise DataError(f"{directory}: cannot read the folder: {error.strerror}") from None
    return None


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def download_file(dataset: str, root, name: str) -> Path:
    """Downloads ``name`` (e.g. ``"train-images-idx3-ubyte"``) of ``dataset`` into
    ``root/<MNIST|FashionMNIST>/raw/<name>.gz``, trying each mirror until one serves a file with
    the published MD5; raises DataError when none does."""
    spec = DATASETS[dataset]
    target = Path(root) / spec["folder"] / "raw" / (name + ".gz")
    failures = []
    for mirror in spec["mirrors"]:
        url = mirror + name + ".gz"
        try:
            data = _fetch(url)
        except OSError as error:
            failures.append(f"{url}: {error}")
            continue
        md5 = hashlib.md5(data).hexdigest()
        if md5 != spec["md5"][name]:
            failures.append(f"{url}: MD5 {md5}, expected {spec['md5'][name]}")
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(target, lambda file: file.write(data))
        except OSError as error:
            raise DataError(f"cannot save the download as {target}: {error.strerror}") from None
        return target
    raise DataError(f"could not download {name}.gz: " + "; ".join(failures))


def load(dataset: str, root, train: bool = True, *, pad_to: Optional[int] = None,
         normalize: bool = True, download: bool = True):
    """Returns ``(images, labels)`` of the training (``train=True``) or test split; see the module
    docstring for the layout looked for, the scaling and the errors."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}, expected one of {sorted(DATASETS)}")
    spec = DATASETS[dataset]
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: not a folder")
    split = "train" if train else "t10k"
    arrays, paths = [], []
    for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
        name = f"{split}-{kind}-ubyte"
        path = _find(root, spec["folder"], name)
        if path is None:
            if not download:
                raise DataError(f"{name} not found in {root} or {root / spec['folder'] / 'raw'}")
            try:
                path = download_file(dataset, root, name)
            except DataError as error:
                raise DataError(f"{name} not found in {root} or {root / spec['folder'] / 'raw'}, "
                                f"and {error}") from None
        arrays.append(read_idx(path, ndim))
        paths.append(path)
    images, labels = arrays
    if tuple(images.shape[1:]) != IMAGE_SIZE:
        raise DataError(f"{paths[0]}: images of {images.shape[1]}x{images.shape[2]} pixels; "
                        f"{dataset} images are {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{dataset} {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.numel() and int(labels.max()) > 9:
        raise DataError(f"{dataset} {split}: label {int(labels.max())} outside 0..9")

    images = images.unsqueeze(1).float().div_(255)
    if pad_to is not None:
        if pad_to < max(images.shape[2:]):
            raise ValueError(f"pad_to={pad_to} is smaller than the {tuple(images.shape[2:])} images")
        pad_h, pad_w = pad_to - images.shape[2], pad_to - images.shape[3]
        images = torch.nn.functional.pad(
            images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    if normalize:
        mean, std = spec["mean_std"]
        images = images.sub_(mean).div_(std)
    return images, labels.long()
