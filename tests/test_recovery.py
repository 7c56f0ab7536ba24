"""python -m lenet_ext.train loses nothing: checkpoints written by an atomic rename survive kill -9 at
any moment, a run resumed from one ends bitwise where an uninterrupted run ends (data order, dropout
and optimizer state included), and Ctrl-C / SIGTERM save, say how to resume and exit 130 / 143.
Every child is a real process, killed by a real signal."""
import copy
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from lenet_ext import checkpoint, train

THREADS = "2"
ENV = dict(os.environ, OMP_NUM_THREADS=THREADS)


def command(*args):
    return [sys.executable, "-m", "lenet_ext.train", "--threads", THREADS, *map(str, args)]


def start(tmp_path, *args, name="run"):
    """Starts a training process whose stdout and stderr go to files (a full pipe would stall it)."""
    out, err = (open(tmp_path / f"{name}.{kind}", "w") for kind in ("out", "err"))
    child = subprocess.Popen(command(*args), stdout=out, stderr=err, env=ENV, text=True)
    child.files = (tmp_path / f"{name}.out", tmp_path / f"{name}.err")
    out.close(), err.close()
    return child


def finish(child, timeout=300):
    code = child.wait(timeout=timeout)
    return code, *(path.read_text() for path in child.files)


def wait_for(path, child, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert child.poll() is None, finish(child)
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.005)


def sleep_into_the_run(path, child):
    """Waits for the run's save after a random epoch e - 1 (e in 3 .. EPOCHS - 1), then sleeps a
    random part of half the time that epoch took: the run is inside epoch e then, with epochs to
    go, however fast the machine and however its speed changes between epochs (a sleep scaled by
    one early epoch outlasted the whole run when later epochs ran faster)."""
    wait_for(path, child)
    target = random.randint(3, EPOCHS - 1)
    saves, last, started = 1, path.stat().st_mtime_ns, time.monotonic()
    took = None
    while saves < target - 1:
        assert child.poll() is None, finish(child)
        time.sleep(0.002)
        mtime = path.stat().st_mtime_ns
        if mtime != last:
            saves, last, now = saves + 1, mtime, time.monotonic()
            took, started = now - started, now
    time.sleep(random.uniform(0, took / 2))


def assert_same_state(got, want):
    for part in ("model", "optimizer"):
        flat_got, flat_want = flatten(got[part]), flatten(want[part])
        assert flat_got.keys() == flat_want.keys()
        for key in flat_want:
            assert same(flat_got[key], flat_want[key]), f"{part} {key} differs"
    assert (got["epoch"], got["step"]) == (want["epoch"], want["step"])


def same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def flatten(tree, prefix=""):
    """{"a.b.0": leaf, ...} for the tensors and values in nested dicts and lists."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    return {key: value for name, sub in items for key, value in flatten(sub, f"{prefix}.{name}").items()}


RUN = {"lenet": ["--model", "lenet", "--optimizer", "sgd"],
       "mlp": ["--model", "mlp", "--optimizer", "adam"]}  # the MLP has dropout
EPOCHS = 6


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final checkpoint of an uninterrupted 6-epoch run of each model on the bundled sample."""
    cache = {}

    def get(model):
        if model not in cache:
            folder = tmp_path_factory.mktemp(f"reference-{model}")
            code, out, err = finish(start(folder, *RUN[model], "--epochs", EPOCHS,
                                          "--checkpoint", folder / "final.pt"))
            assert code == 0, err
            cache[model] = checkpoint.load(folder / "final.pt")
        return cache[model]
    return get


def resume_to_the_end(tmp_path, path):
    code, out, err = finish(start(tmp_path, "--resume", path, name="resumed"))
    assert code == 0, err
    return checkpoint.load(path)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lenet", "mlp"])
def test_killed_and_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(tmp_path, model,
                                                                           uninterrupted):
    path = tmp_path / "run.pt"
    child = start(tmp_path, *RUN[model], "--epochs", EPOCHS, "--checkpoint", path)
    sleep_into_the_run(path, child)  # anywhere in epochs 3 to EPOCHS - 1
    child.kill()  # SIGKILL
    code, out, err = finish(child)
    assert code == -signal.SIGKILL, "the run ended before it was killed: kill it sooner"
    killed = checkpoint.load(path)
    assert 1 <= killed["epoch"] < EPOCHS and killed["step"] == 0
    assert_same_state(resume_to_the_end(tmp_path, path), uninterrupted(model))


@pytest.mark.slow
@pytest.mark.parametrize("model, signum", [("lenet", signal.SIGINT), ("mlp", signal.SIGTERM)])
def test_a_signal_saves_says_how_to_resume_and_the_resumed_run_is_bitwise_equal(
        tmp_path, model, signum, uninterrupted):
    path = tmp_path / "run.pt"
    child = start(tmp_path, *RUN[model], "--epochs", EPOCHS, "--checkpoint", path)
    sleep_into_the_run(path, child)  # most likely in the middle of an epoch
    child.send_signal(signum)
    code, out, err = finish(child)
    assert code == 128 + signum, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"lenet_ext.train: stopped by {signal.Signals(signum).name} in epoch ")
    assert f"saved {path}; continue with: python -m lenet_ext.train --resume {path}" in last
    stopped = checkpoint.load(path)
    assert stopped["epoch"] < EPOCHS
    assert_same_state(resume_to_the_end(tmp_path, path), uninterrupted(model))


def test_a_signal_without_checkpoint_says_nothing_was_saved(tmp_path):
    child = start(tmp_path, "--epochs", 50)
    time.sleep(4)  # past the imports, into training
    child.send_signal(signal.SIGINT)
    code, out, err = finish(child)
    assert code == 130 and "Traceback" not in err
    assert "stopped by SIGINT" in err and "nothing saved (--checkpoint PATH" in err


@pytest.mark.slow
def test_kill_9_at_20_random_moments_always_leaves_a_complete_checkpoint(tmp_path, synthetic_mnist,
                                                                          monkeypatch):
    """Tiny epochs of the MLP (the larger checkpoint: 2.8 MB with Adam's state), a save after each:
    the process spends much of its time writing checkpoints.
    Every run is the same (same seed), so a checkpoint of epoch k must equal the reference's."""
    path = tmp_path / "run.pt"
    args = ["--model", "mlp", "--data-dir", synthetic_mnist, "--no-download", "--checkpoint", path]
    child = start(tmp_path, *args, "--epochs", 10**6, name="first")
    wait_for(path, child)
    child.kill()
    finish(child)
    seen = []
    for trial in range(20):  # each run starts afresh and overwrites the last one's checkpoint
        before = path.stat().st_mtime_ns
        child = start(tmp_path, *args, "--epochs", 10**6, name=f"trial{trial}")
        while path.stat().st_mtime_ns == before:  # this run's first save
            assert child.poll() is None, finish(child)
            time.sleep(0.002)
        time.sleep(random.uniform(0, 0.5))  # ~100 epochs a second, each saved
        child.kill()
        finish(child)
        seen.append(checkpoint.load(path))  # raises if the file is damaged
    saved = {}
    monkeypatch.setattr(checkpoint, "save", lambda state, to: saved.setdefault(
        state["epoch"], copy.deepcopy({key: flatten(state[key]) for key in ("model", "optimizer")})))
    previous_threads = torch.get_num_threads()
    try:
        last = max(state["epoch"] for state in seen)
        assert train.main([*map(str, args), "--threads", THREADS, "--epochs", str(last)]) == 0
    finally:
        torch.set_num_threads(previous_threads)
    for state in seen:
        reference = saved[state["epoch"]]
        for part in ("model", "optimizer"):
            got = flatten(state[part])
            assert got.keys() == reference[part].keys()
            assert all(same(got[key], reference[part][key]) for key in got), state["epoch"]
