"""Fake (meta) kernels of the lenet_ext ops.

The schemas, the CPU/CUDA kernels and autograd are registered in C++ (csrc/; autograd in
csrc/autograd.cpp, at a fraction of a Python autograd.Function's cost a call: docs/performance.md).
A fake kernel computes output shapes only, so torch.compile can trace through an op. It also
runs for meta tensors, and for a call with any one tensor on meta (the Meta key wins the
dispatch), so it first checks the arguments as the C++ entry point does (checks.py).
"""
import torch

from . import checks

lib = torch.ops.lenet_ext


def _empty(shape, like):
    return like.new_empty(shape)


# relu ------------------------------------------------------------------------------------------

@torch.library.register_fake("lenet_ext::relu")
def _relu_fake(input):
    checks.check_dtype("relu", "input", input)
    return _empty(input.shape, input)


@torch.library.register_fake("lenet_ext::relu_backward")
def _relu_backward_fake(grad_output, result):
    op = "relu_backward"
    checks.check_dtype(op, "result", result)
    checks.check_same_dtype_device(op, "grad_output", grad_output, "result", result)
    checks.check_same_shape(op, "grad_output", grad_output, result.shape)
    return _empty(result.shape, result)


# linear ----------------------------------------------------------------------------------------

@torch.library.register_fake("lenet_ext::linear")
def _linear_fake(input, weight, bias):
    checks.check_linear_args(input, weight, bias)
    return _empty(checks.linear_output_shape(input, weight), input)


@torch.library.register_fake("lenet_ext::linear_backward")
def _linear_backward_fake(grad_output, input, weight, output_mask):
    checks.check_output_mask(output_mask, 3)
    checks.check_linear_backward_args(grad_output, input, weight)
    return (_empty(input.shape, input) if output_mask[0] else None,
            _empty(weight.shape, weight) if output_mask[1] else None,
            _empty((weight.shape[0],), weight) if output_mask[2] else None)


# max_pool2d ------------------------------------------------------------------------------------

@torch.library.register_fake("lenet_ext::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    shape = checks.check_max_pool2d_args(input, kernel_size, stride, padding, dilation, ceil_mode)
    return _empty(shape, input), input.new_empty(shape, dtype=torch.int64)


@torch.library.register_fake("lenet_ext::max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, indices, input_size):
    # indices outside the plane, which the kernels refuse, can be seen in their values only
    checks.check_max_pool2d_backward_args(grad_output, indices, input_size)
    return _empty(input_size, grad_output)


# conv2d ----------------------------------------------------------------------------------------

@torch.library.register_fake("lenet_ext::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    shape = checks.check_conv2d_args(input, weight, bias, stride, padding, dilation, groups)
    return _empty(shape, input)


@torch.library.register_fake("lenet_ext::conv2d_backward")
def _conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups,
                          output_mask):
    checks.check_output_mask(output_mask, 3)
    checks.check_conv2d_backward_args(grad_output, input, weight, stride, padding, dilation,
                                      groups)
    return (_empty(input.shape, input) if output_mask[0] else None,
            _empty(weight.shape, weight) if output_mask[1] else None,
            _empty((weight.shape[0],), weight) if output_mask[2] else None)


# fused: conv2d_relu_max_pool2d and the whole-network lenet (CPU only) ---------------------------

@torch.library.register_fake("lenet_ext::conv2d_relu_max_pool2d")
def _conv2d_relu_max_pool2d_fake(input, weight, bias):
    shape = checks.check_conv2d_relu_max_pool2d_args(input, weight, "conv2d_relu_max_pool2d")
    checks.check_conv2d_relu_max_pool2d_bias(bias, input, weight)
    return _empty(shape, input), input.new_empty(shape, dtype=torch.int64)


@torch.library.register_fake("lenet_ext::conv2d_relu_max_pool2d_backward")
def _conv2d_relu_max_pool2d_backward_fake(grad_output, output, indices, input, weight, output_mask):
    checks.check_output_mask(output_mask, 3)
    checks.check_conv2d_relu_max_pool2d_backward_args(grad_output, output, indices, input, weight)
    return (_empty(input.shape, input) if output_mask[0] else None,
            _empty(weight.shape, weight) if output_mask[1] else None,
            _empty((weight.shape[0],), weight) if output_mask[2] else None)


@torch.library.register_fake("lenet_ext::lenet")
def _lenet_fake(input, *parameters):
    checks.check_lenet_args(input, parameters)
    batch = input.shape[0]
    return (_empty((batch, 10), input),
            *(input.new_empty((batch, *shape), dtype=dtype or input.dtype)
              for _, shape, dtype in checks.LENET_ACTIVATIONS))


@torch.library.register_fake("lenet_ext::lenet_backward")
def _lenet_backward_fake(grad_logits, input, conv1_weight, conv2_weight, fc1_weight, fc2_weight,
                         fc3_weight, pool1, pool1_indices, pool2, pool2_indices, fc1_relu, fc2_relu,
                         output_mask):
    checks.check_output_mask(output_mask, 11)
    weights = (conv1_weight, conv2_weight, fc1_weight, fc2_weight, fc3_weight)
    checks.check_lenet_backward_args(grad_logits, input, weights, (
        pool1, pool1_indices, pool2, pool2_indices, fc1_relu, fc2_relu))
    shapes = [input.shape]
    for weight in weights:
        shapes += [weight.shape, weight.shape[:1]]
    return tuple(_empty(shape, input) if wanted else None for shape, wanted in zip(shapes, output_mask))


# double backward: max_pool2d_backward's derivative -------------------------------------------

@torch.library.register_fake("lenet_ext::max_pool2d_gather")
def _max_pool2d_gather_fake(input, indices):
    checks.check_max_pool2d_gather_args(input, indices)
    return _empty(indices.shape, input)
