"""Fake (meta) kernels of the lenet_ext ops.

The schemas, the CPU/CUDA kernels and autograd are registered in C++ (csrc/; autograd in
csrc/autograd.cpp, at a fraction of a Python autograd.Function's cost a call: docs/performance.md).
A fake kernel computes output shapes only, so torch.compile can trace through an op.
"""
import torch

lib = torch.ops.lenet_ext


def _empty(shape, like):
    return like.new_empty(shape)


# relu ------------------------------------------------------------------------------------------

@torch.library.register_fake("lenet_ext::relu")
def _relu_fake(input):
    return _empty(input.shape, input)


@torch.library.register_fake("lenet_ext::relu_backward")
def _relu_backward_fake(grad_output, result):
    torch._check(grad_output.shape == result.shape, lambda: "lenet_ext.relu_backward: shape mismatch")
    return _empty(result.shape, result)


# linear ----------------------------------------------------------------------------------------

@torch.library.register_fake("lenet_ext::linear")
def _linear_fake(input, weight, bias):
    torch._check(input.dim() >= 1 and weight.dim() == 2 and input.shape[-1] == weight.shape[1],
                 lambda: f"lenet_ext.linear: input {tuple(input.shape)} and weight "
                         f"{tuple(weight.shape)} do not match")
    return _empty((*input.shape[:-1], weight.shape[0]), input)


@torch.library.register_fake("lenet_ext::linear_backward")
def _linear_backward_fake(grad_output, input, weight, output_mask):
    return (_empty(input.shape, input) if output_mask[0] else None,
            _empty(weight.shape, weight) if output_mask[1] else None,
            _empty((weight.shape[0],), weight) if output_mask[2] else None)


# max_pool2d ------------------------------------------------------------------------------------

def _pool_output_size(size, kernel, stride, padding, dilation, ceil_mode):
    # csrc/shapes.h pool_output_size: with ceil_mode the last window must start inside the input
    # or the left padding
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


@torch.library.register_fake("lenet_ext::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    out_h, out_w = (_pool_output_size(input.shape[d - 2], kernel_size[d], stride[d], padding[d],
                                      dilation[d], ceil_mode) for d in range(2))
    torch._check(out_h >= 1 and out_w >= 1,
                 lambda: f"lenet_ext.max_pool2d: output size {out_h}x{out_w} is too small")
    shape = (*input.shape[:-2], out_h, out_w)
    return _empty(shape, input), input.new_empty(shape, dtype=torch.int64)


@torch.library.register_fake("lenet_ext::max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, indices, input_size):
    return _empty(input_size, grad_output)


# conv2d ----------------------------------------------------------------------------------------

def _conv_output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@torch.library.register_fake("lenet_ext::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    torch._check(input.dim() == 4 and weight.dim() == 4
                 and input.shape[1] == weight.shape[1] * groups,
                 lambda: f"lenet_ext.conv2d: input {tuple(input.shape)} and weight "
                         f"{tuple(weight.shape)} do not match for groups={groups}")
    out_h, out_w = (_conv_output_size(input.shape[2 + d], weight.shape[2 + d], stride[d],
                                      padding[d], dilation[d]) for d in range(2))
    return _empty((input.shape[0], weight.shape[0], out_h, out_w), input)


@torch.library.register_fake("lenet_ext::conv2d_backward")
def _conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups,
                          output_mask):
    return (_empty(input.shape, input) if output_mask[0] else None,
            _empty(weight.shape, weight) if output_mask[1] else None,
            _empty((weight.shape[0],), weight) if output_mask[2] else None)


# fused: conv2d_relu_max_pool2d and the whole-network lenet (CPU only) ---------------------------

def _check_same_device(op, input, **tensors):
    # A call whose tensors sit on different devices is dispatched here (the fake kernel), not to
    # the C++ kernel that would refuse it, so the fake kernel refuses it too.
    for name, tensor in tensors.items():
        torch._check(tensor.device == input.device,
                     lambda: f"lenet_ext.{op}: expected {name} to be on the same device as input "
                             f"({input.device}), but got {tensor.device}")


@torch.library.register_fake("lenet_ext::conv2d_relu_max_pool2d")
def _conv2d_relu_max_pool2d_fake(input, weight, bias):
    _check_same_device("conv2d_relu_max_pool2d", input, weight=weight, bias=bias)
    torch._check(input.dim() == 4 and weight.dim() == 4 and input.shape[1] == weight.shape[1],
                 lambda: f"lenet_ext.conv2d_relu_max_pool2d: input {tuple(input.shape)} and weight "
                         f"{tuple(weight.shape)} do not match")
    out_h, out_w = ((input.shape[d] - weight.shape[d] + 1) // 2 for d in (2, 3))
    shape = (input.shape[0], weight.shape[0], out_h, out_w)
    return _empty(shape, input), input.new_empty(shape, dtype=torch.int64)


@torch.library.register_fake("lenet_ext::conv2d_relu_max_pool2d_backward")
def _conv2d_relu_max_pool2d_backward_fake(grad_output, output, indices, input, weight, output_mask):
    _check_same_device("conv2d_relu_max_pool2d_backward", input, grad_output=grad_output,
                       output=output, indices=indices, weight=weight)
    return (_empty(input.shape, input) if output_mask[0] else None,
            _empty(weight.shape, weight) if output_mask[1] else None,
            _empty((weight.shape[0],), weight) if output_mask[2] else None)


_LENET_PARAMETERS = ("conv1_weight", "conv1_bias", "conv2_weight", "conv2_bias", "fc1_weight",
                     "fc1_bias", "fc2_weight", "fc2_bias", "fc3_weight", "fc3_bias")
# lenet's outputs after the logits: name, shape after the batch dimension, dtype (None: input's)
_LENET_ACTIVATIONS = (("pool1", (6, 14, 14), None), ("pool1_indices", (6, 14, 14), torch.uint8),
                      ("pool2", (16, 5, 5), None), ("pool2_indices", (16, 5, 5), torch.uint8),
                      ("fc1_relu", (120,), None), ("fc2_relu", (84,), None))


@torch.library.register_fake("lenet_ext::lenet")
def _lenet_fake(input, *parameters):
    _check_same_device("lenet", input, **dict(zip(_LENET_PARAMETERS, parameters)))
    torch._check(input.dim() == 4 and tuple(input.shape[1:]) == (1, 32, 32),
                 lambda: f"lenet_ext.lenet: expected input of shape (N, 1, 32, 32), but got "
                         f"{tuple(input.shape)}")
    batch = input.shape[0]
    return (_empty((batch, 10), input),
            *(input.new_empty((batch, *shape), dtype=dtype or input.dtype)
              for _, shape, dtype in _LENET_ACTIVATIONS))


@torch.library.register_fake("lenet_ext::lenet_backward")
def _lenet_backward_fake(grad_logits, input, conv1_weight, conv2_weight, fc1_weight, fc2_weight,
                         fc3_weight, pool1, pool1_indices, pool2, pool2_indices, fc1_relu, fc2_relu,
                         output_mask):
    weights = (conv1_weight, conv2_weight, fc1_weight, fc2_weight, fc3_weight)
    activations = (pool1, pool1_indices, pool2, pool2_indices, fc1_relu, fc2_relu)
    _check_same_device("lenet_backward", input, grad_logits=grad_logits,
                       **dict(zip(_LENET_PARAMETERS[::2], weights)),
                       **{name: t for (name, _, _), t in zip(_LENET_ACTIVATIONS, activations)})
    shapes = [input.shape]
    for weight in weights:
        shapes += [weight.shape, weight.shape[:1]]
    return tuple(_empty(shape, input) if wanted else None for shape, wanted in zip(shapes, output_mask))


# double backward: max_pool2d_backward's derivative -------------------------------------------

@torch.library.register_fake("lenet_ext::max_pool2d_gather")
def _max_pool2d_gather_fake(input, indices):
    torch._check(indices.dim() == input.dim() and indices.shape[:-2] == input.shape[:-2],
                 lambda: f"lenet_ext.max_pool2d_gather: indices {tuple(indices.shape)} and input "
                         f"{tuple(input.shape)} do not match")
    return _empty(indices.shape, input)
