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
    assert err.startswith("lenet_ext.train: error: --data-dir data: ") and "could not download" in err


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
    network = stock()
    network.load_state_dict(torch.load(checkpoint)["model"])  # strict: the same keys and shapes
    untrained = stock()
    assert not torch.equal(network.fc3.weight, untrained.fc3.weight)


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
@pytest.mark.parametrize("precision", ["fp32", "fp16"])  # fp16: autocast and the loss scale
def test_compiled_training_matches_eager(capsys, synthetic_mnist, precision):
    results = []
    for flags in ([], ["--compile"]):
        code, epochs, summary, err = run_cli(capsys, "--data-dir", synthetic_mnist, "--epochs", 1,
                                             "--no-download", "--precision", precision, *flags)
        assert code == 0, err
        assert summary["compile"] == str(len(flags)) and summary["precision"] == precision
        results.append(epochs[0])
    assert results[0]["test_acc"] == results[1]["test_acc"]
    assert float(results[0]["train_loss"]) == pytest.approx(float(results[1]["train_loss"]), rel=1e-4)


def test_eval_reports_loss_accuracy_and_a_confusion_matrix(capsys, synthetic_mnist, tmp_path):
    path = tmp_path / "net.pt"
    code, epochs, summary, err = run_cli(capsys, "--data-dir", synthetic_mnist, "--epochs", 2,
                                         "--checkpoint", path, "--no-download")
    assert code == 0, err
    # The run's settings come from the checkpoint: only the data must be named again.
    assert train.main(["--eval", str(path), "--data-dir", str(synthetic_mnist)]) == 0
    out = capsys.readouterr().out.splitlines()
    result = parse(out[0])
    assert out[0].startswith("eval ") and result["epoch"] == "2" and result["images"] == "32"
    assert (result["test_loss"], result["test_acc"]) == (epochs[-1]["test_loss"],
                                                          epochs[-1]["test_acc"])
    rows = [line.split() for line in out[2:12]]
    confusion = torch.tensor([[int(n) for n in row[1:11]] for row in rows])
    labels = train.load(  # the test labels, as the CLI reads them
        "mnist", synthetic_mnist, False, download=False)[1]
    assert torch.equal(confusion.sum(1), labels.bincount(minlength=10))
    assert 100 * confusion.trace().item() / 32 == pytest.approx(float(result["test_acc"]), abs=0.005)

    # A bare state_dict (the stock network's, say) is evaluated too, as the model named.
    torch.save(StockLeNet().state_dict(), tmp_path / "stock.pt")
    assert train.main(["--eval", str(tmp_path / "stock.pt"), "--data-dir", str(synthetic_mnist)]) == 0
    assert capsys.readouterr().out.startswith(f"eval checkpoint={tmp_path / 'stock.pt'} model=lenet")


def test_metrics_csv_and_plot_every_epoch(capsys, synthetic_mnist, tmp_path):
    out_dir = tmp_path / "new" / "folder"
    code, epochs, *_ = run_cli(capsys, "--data-dir", synthetic_mnist, "--epochs", 3, "--no-download",
                               "--out", out_dir, "--plot")
    assert code == 0
    rows = (out_dir / "metrics.csv").read_text().splitlines()
    assert rows[0] == "epoch,train_loss,test_loss,test_acc,images_per_s,seconds"
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3"]
    for row, epoch in zip(rows[1:], epochs):
        values = dict(zip(rows[0].split(","), row.split(",")))
        assert float(values["test_acc"]) == float(epoch["test_acc"])
        assert float(values["seconds"]) > 0
    png = (out_dir / "metrics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # Without --out, beside the checkpoint and named like it.
    code, *_ = run_cli(capsys, "--data-dir", synthetic_mnist, "--epochs", 1, "--no-download",
                       "--checkpoint", tmp_path / "run.pt")
    assert code == 0 and len((tmp_path / "run.csv").read_text().splitlines()) == 2


def test_resume_keeps_the_run_settings_and_extends_it(capsys, synthetic_mnist, tmp_path):
    path = tmp_path / "run.pt"
    common = ["--data-dir", synthetic_mnist, "--no-download"]
    code, *_ = run_cli(capsys, *common, "--epochs", 1, "--optimizer", "sgd", "--checkpoint", path)
    assert code == 0
    with pytest.raises(SystemExit) as stop:
        train.main(["--resume", str(path), "--lr", "0.5"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert f"--resume: the run was started with --lr 0.05; a resumed run keeps it" in err

    code, epochs, summary, err = run_cli(capsys, "--resume", path, "--epochs", 3)
    assert code == 0, err
    assert [line["epoch"] for line in epochs] == ["2/3", "3/3"]
    assert summary["optimizer"] == "sgd" and summary["epochs"] == "3"
    assert len((tmp_path / "run.csv").read_text().splitlines()) == 4  # header and epochs 1-3

    code, epochs, summary, err = run_cli(capsys, "--resume", path)
    assert code == 0 and not epochs and "has all 3 epochs already" in err


def test_bf16_mixed_precision_learns_the_bundled_sample(capsys):
    # Adam on the 4,000 bundled digits: bfloat16 autocast passes 95% from epoch 4 (96.3%, then
    # 96.8% at 5), as float32 does (95.6%, 96.9%). One thread: the same result (bitwise, for any
    # count), and ~1 s of training, where two threads on a busy machine spun for a minute.
    code, epochs, summary, err = run_cli(capsys, "--precision", "bf16", "--epochs", 5,
                                         "--threads", 1)
    assert code == 0, err
    assert summary["precision"] == "bf16" and summary["dataset"] == "mnist"
    assert float(summary["test_acc"]) >= 95.0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_keeps_parameters_and_optimizer_state_float32(capsys, synthetic_mnist,
                                                                       tmp_path, precision):
    path = tmp_path / "run.pt"
    code, epochs, summary, err = run_cli(capsys, "--data-dir", synthetic_mnist, "--no-download",
                                         "--epochs", 1, "--precision", precision,
                                         "--checkpoint", path)
    assert code == 0, err
    assert summary["precision"] == precision and float(epochs[0]["train_loss"]) < 10
    saved = torch.load(path)
    assert saved["args"]["precision"] == precision
    optimizer_state = saved["optimizer"]["state"].values()  # Adam's step and moments, a parameter
    tensors = [*saved["model"].values(), *(value for state in optimizer_state
                                           for value in state.values())]
    assert {tensor.dtype for tensor in tensors} == {torch.float32}
    # float16's narrow range needs the loss scaled, on the CPU too; bfloat16 has float32's range
    assert bool(saved["scaler"]) == (precision == "fp16")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_resume_keeps_the_precision_and_the_loss_scale(capsys, synthetic_mnist, tmp_path,
                                                       precision):
    common = ["--data-dir", synthetic_mnist, "--no-download", "--precision", precision]
    straight, resumed = tmp_path / "straight.pt", tmp_path / "resumed.pt"
    code, *_ = run_cli(capsys, *common, "--epochs", 2, "--checkpoint", straight)
    assert code == 0
    code, *_ = run_cli(capsys, *common, "--epochs", 1, "--checkpoint", resumed)
    assert code == 0
    with pytest.raises(SystemExit) as stop:
        train.main(["--resume", str(resumed), "--precision", "fp32"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert (f"--resume: the run was started with --precision {precision}; a resumed run keeps "
            f"it") in err

    code, epochs, summary, err = run_cli(capsys, "--resume", resumed, "--epochs", 2)
    assert code == 0, err
    assert summary["precision"] == precision
    want, got = torch.load(straight), torch.load(resumed)
    assert got["args"]["precision"] == precision
    assert got["scaler"] == want["scaler"]  # fp16's scale and its growth count go on
    for key, value in want["model"].items():
        assert torch.equal(got["model"][key], value), key


@pytest.mark.parametrize("args, message", [
    (["--threads", "-1"], "argument --threads: expected a positive int, got -1"),
    (["--epochs", "0"], "argument --epochs: expected a positive int, got 0"),
    (["--batch-size", "0"], "argument --batch-size: expected a positive int, got 0"),
    (["--lr", "-0.1"], "argument --lr: expected a positive float, got -0.1"),
    (["--lr", "nan"], "argument --lr: expected a positive float, got nan"),
    (["--save-every", "0"], "argument --save-every: expected a positive int, got 0"),
    (["--checkpoint", "no/such/folder/net.pt"],
     "--checkpoint no/such/folder/net.pt: directory no/such/folder does not exist"),
    (["--resume", "no-such.pt"], "--resume: no-such.pt does not exist"),
    (["--eval", "a.pt", "--resume", "b.pt"], "--resume and --eval exclude each other"),
])
def test_bad_arguments_are_one_line_errors(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        train.main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err == f"python -m lenet_ext.train: error: {message} (see --help)\n"


def test_a_file_that_is_not_a_checkpoint_is_named(capsys, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save(StockLeNet().state_dict(), tmp_path / "bare.pt")
    for path, reason in ((tmp_path / "junk.pt", "is not a readable checkpoint"),
                         (tmp_path / "bare.pt", "is not a training checkpoint")):
        with pytest.raises(SystemExit):
            train.main(["--resume", str(path)])
        assert f"--resume: {path} {reason}" in capsys.readouterr().err


def test_plot_without_matplotlib_says_how_to_get_it(capsys, monkeypatch):
    monkeypatch.setattr(train.metrics, "plotting_available", lambda: False)
    with pytest.raises(SystemExit):
        train.main(["--plot", "--out", "."])
    assert "--plot needs matplotlib: pip install 'lenet_ext[plot]'" in capsys.readouterr().err
