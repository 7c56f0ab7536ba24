"""torch.nn.functional's signatures and semantics, computed by lenet_ext's kernels."""
from typing import Optional

import torch
from torch import Tensor

from .ops import lib


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    """Like torch.nn.functional.relu. ``inplace=True`` writes the result back into ``input``
    (and, like torch, refuses a leaf that requires grad)."""
    if inplace:
        return input.copy_(lib.relu(input))
    return lib.relu(input)


def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Like torch.nn.functional.linear: input (*, in_features), weight (out_features, in_features)."""
    return lib.linear(input, weight, bias)


def _pair(value):
    """int or 1- or 2-sequence -> 2-tuple, as torch's pooling accepts."""
    if isinstance(value, (int, torch.SymInt)):
        return (value, value)
    value = tuple(value)
    return value * 2 if len(value) == 1 else value


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    """Like torch.nn.functional.max_pool2d: input (N, C, H, W) or (C, H, W); ``stride`` defaults to
    ``kernel_size``. With ``return_indices`` also returns the argmax as flat offsets into each input
    plane."""
    kernel_size = _pair(kernel_size)
    stride = kernel_size if stride is None else (_pair(stride) or kernel_size)  # torch: [] too
    output, indices = lib.max_pool2d(input, kernel_size, stride, _pair(padding), _pair(dilation),
                                     ceil_mode)
    return (output, indices) if return_indices else output
