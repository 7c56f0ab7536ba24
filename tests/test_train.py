"""python -m lenet_ext.train: a short run on real MNIST digits, the bundled sample by default, the
output format, checkpoints that the stock network loads, and exit code 2 with a message naming
--data-dir when there is no data."""
import os
import subprocess
import sys

import pytest
import torch

from lenet_ext import train
from lenet_ext.models import StockLeNet, StockMLP
from helpers import parse


def run_cli(capsys, *args):
    """Runs the CLI in this process; returns (exit code, epoch lines, summary, stderr)."""
    code = train.main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    epochs = [parse(line) for line in lines if line.startswith("epoch=")]
    summary = [parse(line) for line in lines if line.startswith("summary ")]
    return code, epochs, summary[0] if summary else None, err


def test_short_run_on_real_mnist_learns_and_matches_stock(capsys, mnist_5k):
    accuracy = {}
    for backend in ("ext", "torch"):
        code, epochs, summary, err = run_cli(capsys, "--data-dir", mnist_5k, "--epochs", 1,
                                             "--backend", backend, "--no-download")
        assert code == 0, err
        assert "img/s" in err and "loss=" in err  # the progress bar
        assert summary["backend"] == backend and float(summary["images_per_s"]) > 0
        accuracy[backend] = float(summary["test_acc"])
    # One epoch of Adam on 4,000 digits: stock reaches ~90%.
    assert accuracy["ext"] >= 87.0
    assert abs(accuracy["ext"] - accuracy["torch"]) <= 1.0


def test_without_data_dir_trains_offline_on_the_bundled_sample_and_says_so(tmp_path):
    # A proxy that refuses every connection: no download can succeed.
    offline = dict(os.environ, http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    result = subprocess.run([sys.executable, "-m", "lenet_ext.train", "--epochs", "1"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=offline)
    assert result.returncode == 0, result.stderr
    first, *rest = result.stdout.splitlines()
    assert "bundled" in first and "4,000 training / 1,000 test images" in first
    assert "--data-dir" in first
    summary = parse(rest[-1])
    assert summary["dataset"] == "mnist" and summary["epochs"] == "1"
    assert float(summary["test_acc"]) >= 87.0  # as the run on the same digits through --data-dir
    assert not any(tmp_path.iterdir())  # nothing downloaded into ./data


def test_fashion_mnist_without_data_dir_looks_in_data(capsys, tmp_path, monkeypatch, offline):
    monkeypatch.chdir(tmp_path)
    code, epochs, summary, err = run_cli(capsys, "--dataset", "fashion-mnist", "--epochs", 1)
    assert code == 2 and not epochs
    assert "(now --data-dir data)" in err and "could not download" in err


@pytest.mark.parametrize("model, dataset, optimizer", [
    ("lenet", "mnist", "sgd"),
    ("mlp", "fashion-mnist", "adam"),
])
def test_prints_a_line_per_epoch_and_a_summary(capsys, synthetic_mnist, model, dataset, optimizer):
    code, epochs, summary, err = run_cli(
        capsys, "--data-dir", synthetic_mnist, "--model", model, "--dataset", dataset,
        "--optimizer", optimizer, "--epochs", 2, "--batch-size", 32, "--threads", 1, "--no-download")
    assert code == 0, err
    assert [line["epoch"] for line in epochs] == ["1/2", "2/2"]
    for line in epochs:
        assert float(line["train_loss"]) > 0 and 0 <= float(line["test_acc"]) <= 100
        assert float(line["images_per_s"]) > 0
    assert {key: summary[key] for key in ("model", "dataset", "optimizer", "epochs", "processes")} == {
        "model": model, "dataset": dataset, "optimizer": optimizer, "epochs": "2", "processes": "1"}
    assert summary["test_acc"] == epochs[-1]["test_acc"]


@pytest.mark.parametrize("model, stock", [("lenet", StockLeNet), ("mlp", StockMLP)])
def test_checkpoint_loads_into_the_stock_network(capsys, synthetic_mnist, tmp_path, model, stock):
    checkpoint = tmp_path / "net.pt"
    code, *_, err = run_cli(capsys, "--data-dir", synthetic_mnist, "--model", model, "--epochs", 1,
                            "--checkpoint", checkpoint, "--no-download")
    assert code == 0, err
    state = torch.load(checkpoint)
    network = stock()
    network.load_state_dict(state)  # strict: the same keys and shapes
    untrained = stock()
    assert not torch.equal(state["fc3.weight"], untrained.fc3.weight)


def test_without_data_and_offline_exits_2_naming_data_dir(capsys, tmp_path, offline):
    code, epochs, summary, err = run_cli(capsys, "--data-dir", tmp_path / "nowhere", "--epochs", 1)
    assert code == 2
    assert "--data-dir" in err and "nowhere" in err and "could not download" in err
    assert not epochs and summary is None


def test_python_m_entry_point_exits_2_without_data(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lenet_ext.train", "--data-dir", tmp_path,
                             "--no-download"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--data-dir" in result.stderr and "train-images-idx3-ubyte not found" in result.stderr
    assert result.stdout == ""


@pytest.mark.slow
def test_compiled_training_matches_eager(capsys, synthetic_mnist):
    results = []
    for flags in ([], ["--compile"]):
        code, epochs, summary, err = run_cli(capsys, "--data-dir", synthetic_mnist, "--epochs", 1,
                                             "--no-download", *flags)
        assert code == 0, err
        assert summary["compile"] == str(len(flags))
        results.append(epochs[0])
    assert results[0]["test_acc"] == results[1]["test_acc"]
    assert float(results[0]["train_loss"]) == pytest.approx(float(results[1]["train_loss"]), rel=1e-4)
