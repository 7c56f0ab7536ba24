"""Checkpoints that survive a crash, and the random state that makes a resumed run bitwise equal to
an uninterrupted one.

``save(obj, path)`` writes ``obj`` with ``torch.save`` through ``write_atomically``: to a temporary
file in the same directory, flushed and fsynced, renamed over ``path``, the directory fsynced:
whenever the process dies, ``path`` holds either the previous complete file or the new one, never a
mix. ``load(path)``
reads one back (tensors and plain Python values only: ``weights_only``) or raises
``CheckpointError`` naming the file and what is wrong with it.

A training checkpoint (``python -m lenet_ext.train --checkpoint P``) is a dict whose ``"model"``
entry is the network's ``state_dict``, so the stock network loads it in one line::

    StockLeNet().load_state_dict(torch.load(P)["model"])
"""
import os
import random
import tempfile
from pathlib import Path

import torch

FORMAT = "lenet_ext.train/1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not one this package wrote."""


def save(obj, path) -> None:
    write_atomically(path, lambda file: torch.save(obj, file))


def write_atomically(path, write) -> None:
    """``write(file)`` into a temporary binary file beside ``path``, flushed and fsynced, then renamed
    over ``path``, and the folder fsynced: ``path`` is always the old file or the new one, whole.
    Every file this package keeps across a crash goes through here (checkpoints, metrics, plots,
    downloads, benchmark reports)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")  # one writer a path: a stale one is overwritten
    try:
        with open(partial, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    # The rename itself is durable only once the directory entry is on disk.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def check_writable(path) -> None:
    """Raises CheckpointError unless a checkpoint can be written at ``path``: its directory exists
    and a file can be created there (tried, so read-only mounts are caught too)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, expected a file name")
    if not path.parent.is_dir():
        raise CheckpointError(f"directory {path.parent} does not exist")
    try:  # a name of its own: every process of a distributed run checks at once
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}."):
            pass
    except OSError as error:
        raise CheckpointError(f"cannot write in {path.parent}: {error.strerror}") from None


def load(path, *, training: bool = True) -> dict:
    """The dict saved at ``path``. With ``training`` it must be a training checkpoint (see the
    module docstring); otherwise a bare ``state_dict`` is accepted too."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except Exception as error:  # torch.load reports a damaged file in many ways
        raise CheckpointError(f"{path} is not a readable checkpoint: "
                              f"{str(error).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint")
    if training and state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint of python -m lenet_ext.train "
                              f"(no format {FORMAT!r})")
    return state


def random_state(shuffle_state: torch.Tensor, device: torch.device) -> dict:
    """Every random stream a training step draws from: torch's (dropout, initialisation), Python's,
    the CUDA device's, and the given state of the data order's generator."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "shuffle": shuffle_state}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_random_state(state: dict, shuffle: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    shuffle.set_state(state["shuffle"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
