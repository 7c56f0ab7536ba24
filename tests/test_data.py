"""lenet_ext.data: MNIST / Fashion-MNIST from IDX files (synthetic ones in tmp_path, and the real
MNIST sample inside the package), with clear errors for missing, corrupt, truncated and empty files,
images of the wrong size and folders that cannot be read; the training CLI says each in one line."""
import gzip
import hashlib
import re
from pathlib import Path

import pytest
import torch

from lenet_ext import data, train
from lenet_ext.data import DataError
from helpers import idx_bytes, write_split


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("dot", [False, True], ids=["images-idx3", "images.idx3"])
@pytest.mark.parametrize("split", ["train", "t10k"])
def test_reads_every_spelling_and_compression(tmp_path, gz, dot, split):
    images, labels = write_split(tmp_path, split, gz=gz, dot=dot)
    got_images, got_labels = data.load("mnist", tmp_path, train=split == "train", normalize=False,
                                       download=False)
    assert got_images.shape == (len(labels), 1, 28, 28) and got_images.dtype == torch.float32
    torch.testing.assert_close(got_images, images.unsqueeze(1).float() / 255)
    assert got_labels.dtype == torch.int64 and torch.equal(got_labels, labels.long())


@pytest.mark.parametrize("dataset, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_reads_torchvision_layout(tmp_path, dataset, folder):
    _, labels = write_split(tmp_path / folder / "raw", "t10k")
    _, got_labels = data.load(dataset, tmp_path, train=False, download=False)
    assert torch.equal(got_labels, labels.long())


def test_pads_28_to_32_with_background(tmp_path):
    images, _ = write_split(tmp_path)
    padded, _ = data.load("mnist", tmp_path, pad_to=32, normalize=False, download=False)
    assert padded.shape[2:] == (32, 32)
    torch.testing.assert_close(padded[:, 0, 2:30, 2:30], images.float() / 255)
    padded[:, :, 2:30, 2:30] = 0
    assert not padded.any()


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_normalize_standardises_by_the_data_set_statistics(tmp_path, dataset):
    write_split(tmp_path)
    plain, _ = data.load(dataset, tmp_path, pad_to=32, normalize=False, download=False)
    normalized, _ = data.load(dataset, tmp_path, pad_to=32, download=False)
    mean, std = data.DATASETS[dataset]["mean_std"]
    torch.testing.assert_close(normalized, (plain - mean) / std)


def test_missing_files_name_the_directory(tmp_path):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte not found in .*" + tmp_path.name):
        data.load("mnist", tmp_path, download=False)


def test_missing_files_offline_say_the_download_failed(tmp_path, offline):
    with pytest.raises(DataError, match=r"not found in .*could not download train-images-idx3-ubyte"
                                        r".*network is unreachable"):
        data.load("mnist", tmp_path)


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_download_keeps_a_file_only_when_its_md5_matches(tmp_path, monkeypatch, dataset):
    write_split(tmp_path / "source")
    served = {name: (tmp_path / "source" / (name + ".gz")).read_bytes()
              for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")}
    monkeypatch.setattr(data, "_fetch", lambda url: served[url.rpartition("/")[2][:-3]])
    with pytest.raises(DataError, match="MD5 .* expected " + data.DATASETS[dataset]["md5"][
            "train-images-idx3-ubyte"]):
        data.load(dataset, tmp_path / "root")
    assert not list((tmp_path / "root").rglob("*.gz"))

    md5 = {name: hashlib.md5(content).hexdigest() for name, content in served.items()}
    monkeypatch.setitem(data.DATASETS[dataset], "md5", md5)
    _, labels = data.load(dataset, tmp_path / "root")
    folder = data.DATASETS[dataset]["folder"]
    assert (tmp_path / "root" / folder / "raw" / "train-labels-idx1-ubyte.gz").is_file()
    assert len(labels) == 6


def corrupt_magic(content):
    return b"\x00\x00\x09\x03" + content[4:]


def truncate(content):
    return content[:-5]


def extend(content):
    return content + b"\x00"


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("damage, message", [
    (corrupt_magic, "not an IDX file of 3-d unsigned bytes: magic number 00000903, expected 00000803"),
    (truncate, "truncated: 3931 bytes, expected 3936"),
    (extend, "corrupt: 3937 bytes, expected 3936"),
    (lambda content: content[:10], "truncated: 10 bytes, shorter than an IDX header"),
])
def test_damaged_image_file_is_named_with_the_reason(tmp_path, gz, damage, message):
    images, _ = write_split(tmp_path, count=5, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    content = damage(path.read_bytes())
    path.unlink()
    if gz:
        path = path.with_name(path.name + ".gz")
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(DataError, match=re.escape(f"{path.name}: {message}")):
        data.load("mnist", tmp_path, download=False)


def flip_middle_byte(content):
    middle = len(content) // 2
    return content[:middle] + bytes([content[middle] ^ 0xFF]) + content[middle + 1:]


@pytest.mark.parametrize("damage, message", [
    (lambda content: content[:-20], "truncated: the gzip stream ends early"),
    (flip_middle_byte, "cannot read: "),
])
def test_damaged_gzip_stream_is_named_with_the_reason(tmp_path, damage, message):
    write_split(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=re.escape(f"{path.name}: {message}")):
        data.load("mnist", tmp_path, download=False)


def test_image_and_label_counts_must_agree(tmp_path):
    write_split(tmp_path, count=6)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(torch.zeros(5, dtype=torch.uint8))))
    with pytest.raises(DataError, match="6 images but 5 labels"):
        data.load("mnist", tmp_path, download=False)


def test_labels_must_be_digits(tmp_path):
    write_split(tmp_path, count=6)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(torch.tensor([0, 1, 2, 10, 3, 4]))))
    with pytest.raises(DataError, match="label 10 outside 0..9"):
        data.load("mnist", tmp_path, download=False)


@pytest.mark.parametrize("train, count", [(True, 4000), (False, 1000)])
def test_reads_the_real_mnist_5k_sample(mnist_5k, train, count):
    images, labels = data.load("mnist", mnist_5k, train=train, pad_to=32, download=False)
    assert images.shape == (count, 1, 32, 32)
    assert torch.equal(labels.bincount(), torch.full((10,), count // 10))
    # Digits: mostly background with a bright stroke; normalised, the mean is near 0 and std near 1.
    assert abs(images.mean().item()) < 0.2 and 0.8 < images.std().item() < 1.1


def test_the_bundled_sample_carries_its_licence_note():
    assert "CC BY-SA 3.0" in (data.BUNDLED_MNIST / "README.md").read_text()


# Each bad data set the training CLI may meet: exit 2 and one line naming the file and the fault.
def zero_items(root):
    write_split(root, "train", count=0)
    write_split(root, "t10k", count=4)
    return root / "train-images-idx3-ubyte.gz", "empty: its header says shape [0, 28, 28]"


def sized(train_size, test_size):
    def build(root):
        write_split(root, "train", count=8, size=train_size)
        write_split(root, "t10k", count=4, size=test_size)
        bad = ("train", train_size) if train_size != 28 else ("t10k", test_size)
        return (root / f"{bad[0]}-images-idx3-ubyte.gz",
                f"images of {bad[1]}x{bad[1]} pixels; mnist images are 28x28")
    return build


def not_a_folder(root):
    path = root / "file"
    path.write_text("not a folder")
    return path, "not a folder"


@pytest.mark.parametrize("model", ["lenet", "mlp"])
@pytest.mark.parametrize("build", [zero_items, sized(29, 29), sized(33, 33), sized(29, 28),
                                   sized(28, 29), not_a_folder],
                         ids=["0-items", "29x29", "33x33", "train-29-test-28", "train-28-test-29",
                              "not-a-folder"])
def test_the_cli_refuses_bad_data_in_one_line_naming_the_file(tmp_path, capsys, build, model):
    path, reason = build(tmp_path)
    data_dir = path if build is not_a_folder else tmp_path
    code = train.main(["--data-dir", str(data_dir), "--no-download", "--model", model, "--epochs", "1"])
    out, err = capsys.readouterr()
    assert code == 2 and "epoch=" not in out
    assert err.count("\n") == 1, err
    assert err.startswith(f"lenet_ext.train: error: --data-dir {data_dir}: {path}: {reason}")


def test_the_cli_names_a_folder_it_cannot_read(tmp_path, capsys, monkeypatch):
    # Tests run as root, whom chmod does not stop: the refusal is simulated where it would arise.
    write_split(tmp_path, "train")
    real_is_file = Path.is_file

    def is_file(path):
        if path.parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_is_file(path)
    monkeypatch.setattr(Path, "is_file", is_file)
    code = train.main(["--data-dir", str(tmp_path), "--no-download", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{tmp_path}: cannot read the folder: Permission denied" in err


def test_a_download_that_cannot_be_saved_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_fetch", lambda url: b"")
    monkeypatch.setitem(data.DATASETS["mnist"]["md5"], "train-images-idx3-ubyte",
                        "d41d8cd98f00b204e9800998ecf8427e")  # the MD5 of no bytes
    (tmp_path / "MNIST").write_text("a file where the download's folder would go")
    with pytest.raises(DataError, match="cannot save the download as .*train-images-idx3-ubyte.gz"):
        data.load("mnist", tmp_path)
