"""DistributedDataParallel over lenet_ext's ops: gloo processes on CPU average their gradients into
exactly what one process computes on the whole batch, and torchrun runs the training CLI."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lenet_ext.models import LeNet
from helpers import GRAD_TOL, parse

WORLD_SIZE = 2


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ddp_gradients(rank, port, state, images, targets, result_path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD_SIZE)
    try:
        network = LeNet()
        network.load_state_dict(state)
        model = torch.nn.parallel.DistributedDataParallel(network)
        mine = slice(rank, None, WORLD_SIZE)
        F.cross_entropy(model(images[mine]), targets[mine]).backward()
        torch.save([p.grad for p in network.parameters()], f"{result_path}.{rank}")
    finally:
        dist.destroy_process_group()
    # Out without the interpreter's exit, like lenet_ext.train's ranks: torch's gloo teardown there
    # aborts a process now and then (std::terminate in a C++ destructor, after the work is saved).
    # An exception above still reaches mp.spawn, which reports it.
    os._exit(0)


def test_ddp_averages_to_the_single_process_gradient(tmp_path):
    network = LeNet()
    images, targets = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    result_path = tmp_path / "grads"
    mp.spawn(ddp_gradients, args=(free_port(), network.state_dict(), images, targets, result_path),
             nprocs=WORLD_SIZE)
    F.cross_entropy(network(images), targets).backward()
    expected = [p.grad for p in network.parameters()]
    for rank in range(WORLD_SIZE):
        grads = torch.load(f"{result_path}.{rank}")
        for (name, _), got, want in zip(network.named_parameters(), grads, expected):
            torch.testing.assert_close(got, want, **GRAD_TOL, msg=f"rank {rank} {name}")


@pytest.mark.slow
def test_torchrun_two_processes_train_like_one_with_the_whole_batch(synthetic_mnist):
    common = ["-m", "lenet_ext.train", "--data-dir", str(synthetic_mnist), "--epochs", "1", "--no-download",
              "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launches = {
        1: [sys.executable, *common, "--batch-size", "32"],
        WORLD_SIZE: [sys.executable, "-m", "torch.distributed.run", "--standalone",
                     f"--nproc_per_node={WORLD_SIZE}", *common, "--batch-size", str(32 // WORLD_SIZE)],
    }
    results = {}
    for processes, command in launches.items():
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        lines = [parse(line) for line in result.stdout.splitlines()]
        assert len(lines) == 2, result.stdout  # one epoch line and the summary, from rank 0 only
        assert lines[1]["processes"] == str(processes)
        results[processes] = lines[0]
    # Rank r takes every WORLD_SIZE-th image of the same shuffled order, so the two processes'
    # batches together are the single process's batch: the same steps, up to rounding.
    assert float(results[WORLD_SIZE]["train_loss"]) == pytest.approx(
        float(results[1]["train_loss"]), rel=1e-4)
    assert results[WORLD_SIZE]["test_acc"] == results[1]["test_acc"]


@pytest.mark.slow
def test_ctrl_c_under_torchrun_stops_every_rank_and_rank_0_alone_saves(tmp_path):
    """Ctrl-C reaches torchrun and its workers (one process group); the ranks agree on the step to
    stop at, rank 0 writes the checkpoint, and the run resumes under torchrun to the end."""
    path = tmp_path / "run.pt"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              f"--nproc_per_node={WORLD_SIZE}", "-m", "lenet_ext.train", "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(tmp_path / "err", "w") as err:
        run = subprocess.Popen([*launch, "--epochs", "30", "--checkpoint", str(path)], env=env,
                               stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        deadline = time.monotonic() + 120
        while not path.exists():
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        run.wait(timeout=120)
    lines = (tmp_path / "err").read_text().replace("\r", "\n").splitlines()
    stopped = [line for line in lines if "stopped by SIGINT" in line]
    assert len(stopped) == 1, lines[-20:]  # rank 0 alone speaks
    assert (f"saved {path}; continue with: torchrun --nproc_per_node={WORLD_SIZE} -m "
            f"lenet_ext.train --resume {path}") in stopped[0]
    # torchrun's own SignalException traceback is the launcher's; no worker may have one.
    assert not any("lenet_ext" in line for line in lines if line.startswith("  File"))
    state = torch.load(path)
    assert state["processes"] == WORLD_SIZE and state["epoch"] < 30
    assert not list(tmp_path.glob(".run.pt.*"))  # no second writer left a partial file

    resumed = subprocess.run([*launch, "--resume", str(path), "--epochs", str(state["epoch"] + 1)],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(path)["epoch"] == state["epoch"] + 1
