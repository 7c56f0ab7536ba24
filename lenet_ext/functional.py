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
