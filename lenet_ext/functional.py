"""torch.nn.functional's signatures and semantics, computed by lenet_ext's kernels."""
from typing import Optional

import torch
from torch import Tensor
from torch.compiler import is_dynamo_compiling

from .checks import dtype_name
from .ops import lib


# The ops' single overloads, bound once (no overload lookup in the packet), and their C++ entries.
# Eager calls take the entry: OpOverload.__call__ is a Python frame that only forwards to it and
# costs ~0.35 µs, a fifth of relu at batch 1. torch.compile gets the OpOverload, which it traces
# (it cannot trace the raw entry); is_dynamo_compiling() is a constant to it, and in eager a
# function that returns False (16 ns; is_compiling() takes 50). (Registering the entries as
# polyfills with torch.compiler.substitute_in_graph would save the branch, but imports torch._dynamo
# with lenet_ext: +1.3 s, and gloo's DistributedDataParallel then deadlocked in ~1 of 10 teardowns.)
_relu, _linear = lib.relu.default, lib.linear.default
_max_pool2d, _conv2d = lib.max_pool2d.default, lib.conv2d.default
_relu_eager, _linear_eager = _relu._op, _linear._op
_max_pool2d_eager, _conv2d_eager = _max_pool2d._op, _conv2d._op


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    """Like torch.nn.functional.relu. ``inplace=True`` writes the result back into ``input``
    (and, like torch, refuses a leaf that requires grad)."""
    result = _relu(input) if is_dynamo_compiling() else _relu_eager(input)
    return input.copy_(result) if inplace else result


def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Like torch.nn.functional.linear: input (*, in_features), weight (out_features, in_features)
    or (in_features,), which contracts the last dimension away. A bias the op does not take (of
    another dtype, or of a shape that expands to the output's) is added as torch's unfused path adds
    it: the output keeps its shape and dtype."""
    op = _linear if is_dynamo_compiling() else _linear_eager
    try:  # the op takes a 2-D weight and a bias like input's of shape (out_features,) only;
        return op(input, weight, bias)  # checking that first costs ~0.4 µs
    except (RuntimeError, TypeError):
        vector = weight.dim() == 1
        if not vector and (bias is None or weight.dim() != 2):
            raise
    if bias is not None and bias.device != input.device:
        raise RuntimeError(f"lenet_ext.linear: expected bias to be on the same device as input "
                           f"({input.device}), but got {bias.device}")
    output = op(input, weight.unsqueeze(0), None).squeeze(-1) if vector else op(input, weight, None)
    if bias is None:
        return output
    if not torch.can_cast(bias.dtype, output.dtype):
        raise TypeError(f"lenet_ext.linear: expected bias of a dtype that casts to input's "
                        f"({dtype_name(output.dtype)}), but got {dtype_name(bias.dtype)}")
    try:
        bias = bias.expand(output.shape)  # torch's rule: the output's shape does not change
    except RuntimeError:
        # torch's fused path also takes a 1-D input's output as one row: a bias like it of 1 row
        if input.dim() == 1 and not vector and bias.dtype == output.dtype and \
                list(bias.shape) == [1, *output.shape]:
            return op(input, weight, bias[0])
        expected = f"[{weight.shape[0]}] (out_features)" if not vector else "[]"
        raise RuntimeError(f"lenet_ext.linear: expected bias of shape {expected}, or one that "
                           f"expands to the output's shape {list(output.shape)}, but got shape "
                           f"{list(bias.shape)}") from None
    return (output + bias).to(output.dtype)  # as torch's in-place add: summed, then cast


def _pair(value):
    """int or 1- or 2-sequence -> 2-tuple, as torch's convolutions and pooling accept; other
    lengths and types pass through to the op's check, which names them."""
    if isinstance(value, (int, torch.SymInt)):
        return (value, value)
    if not isinstance(value, (tuple, list)):
        return value
    value = tuple(value)
    return value * 2 if len(value) == 1 else value


def _ints(value):
    """An int[2] argument for the op: an int, or a pair of equal ints, as one int (the op's argument
    parser repeats it, and reads it ~0.12 µs faster than a tuple: 0.5 µs of a pool call at batch
    1); anything else as _pair."""
    if type(value) is int:
        return value
    if type(value) is tuple and len(value) == 2 and value[0] == value[1] and type(value[0]) is int:
        return value[0]
    return _pair(value)


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    """Like torch.nn.functional.max_pool2d: input (N, C, H, W) or (C, H, W); ``stride`` defaults to
    ``kernel_size``. With ``return_indices`` also returns the argmax as flat offsets into each input
    plane."""
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):  # torch: [] too
        stride = kernel_size
    pool = _max_pool2d if is_dynamo_compiling() else _max_pool2d_eager
    output, indices = pool(input, _ints(kernel_size), _ints(stride), _ints(padding), _ints(dilation),
                           ceil_mode)
    return (output, indices) if return_indices else output


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> Tensor:
    """Like torch.nn.functional.conv2d: input (N, C, H, W) or unbatched (C, H, W), weight
    (out_channels, C / groups, kernel_h, kernel_w); stride, padding and dilation an int or a pair,
    padding also ``'valid'`` or ``'same'``."""
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    if isinstance(padding, str):
        padding, input = _string_padding(padding, input, weight, _pair(stride), _pair(dilation))
    conv = _conv2d if is_dynamo_compiling() else _conv2d_eager
    output = conv(input, weight, bias, _ints(stride), _ints(padding), _ints(dilation), groups)
    return output.squeeze(0) if unbatched else output


def _string_padding(padding, input, weight, stride, dilation):
    """(symmetric padding for the op, input) for padding 'valid' or 'same'. An even 'same' total
    puts its extra row/column at the bottom/right, padded here as torch does."""
    if padding == "valid":
        return [0, 0], input
    if padding != "same":
        raise RuntimeError(f"lenet_ext.conv2d: expected padding to be an int, a pair, 'valid' or "
                           f"'same', but got {padding!r}")
    if stride != (1, 1):
        given = list(stride) if isinstance(stride, tuple) else repr(stride)
        raise RuntimeError(f"lenet_ext.conv2d: padding='same' is not supported for strided "
                           f"convolutions: expected stride 1, but got stride {given}")
    if weight.dim() != 4 or not isinstance(dilation, tuple) or len(dilation) != 2:
        return [0, 0], input  # the op reports the weight's rank or the dilation
    totals = [dilation[d] * (weight.shape[2 + d] - 1) for d in range(2)]
    extra_h, extra_w = (total % 2 for total in totals)
    # only a valid input: the op refuses the others by name, and padding an empty plane of huge
    # other sizes first would allocate them
    if (extra_h or extra_w) and input.dim() == 4 and 0 not in input.shape[-2:]:
        input = torch.nn.functional.pad(input, (0, extra_w, 0, extra_h))
    return [total // 2 for total in totals], input
