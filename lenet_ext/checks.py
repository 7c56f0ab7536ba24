"""The C++ entry points' argument checks (csrc/checks.h, csrc/<op>.h and the fused ops' entry points
in csrc/cpu/fused/), in the same order and with the same messages and exception classes, for the
fake kernels (ops.py). An op runs its fake kernel on meta tensors, under torch.compile, and whenever
one of its tensors is on the meta device (the Meta key wins the dispatch over CPU): it then refuses
what the CPU or CUDA kernel would refuse, as they do. Each function is its C++ namesake, line for
line; tests/test_fake.py runs every bad argument on meta and on CPU and compares the errors.
"""
import torch

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

# c10's names of the dtypes, as the C++ messages print them
_SCALAR_TYPE_NAMES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
    torch.bfloat16: "BFloat16", torch.int64: "Long", torch.int32: "Int", torch.int16: "Short",
    torch.int8: "Char", torch.uint8: "Byte", torch.bool: "Bool", torch.complex32: "ComplexHalf",
    torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}


def dtype_name(dtype):
    """c10's name of a dtype (Float for torch.float32), as the C++ messages print it."""
    return _SCALAR_TYPE_NAMES.get(dtype, str(dtype))


def _str(part):
    """A message part as c10::str writes it: sizes and int lists as [2, 3], dtypes by c10 name."""
    if isinstance(part, torch.dtype):
        return dtype_name(part)
    if isinstance(part, (torch.Size, list, tuple)):
        return "[" + ", ".join(map(str, part)) + "]"
    return str(part)


def _check(condition, *parts):  # TORCH_CHECK: RuntimeError
    torch._check(condition, lambda: "".join(map(_str, parts)))


def _check_type(condition, *parts):  # TORCH_CHECK_TYPE: TypeError
    torch._check_type(condition, lambda: "".join(map(_str, parts)))


def _int64(value):
    """value as the C++ int64_t arithmetic gives it (built with -fwrapv: it wraps)."""
    if type(value) is not int:  # a SymInt under torch.compile: no overflow to mirror
        return value
    return (value + 2**63) % 2**64 - 2**63


# csrc/checks.h ----------------------------------------------------------------------------------

def check_dtype(op, arg, t):
    _check_type(t.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16),
                "lenet_ext.", op, ": expected ", arg,
                " to have dtype float32, float64, bfloat16 or float16, but got ", t.dtype)


def check_same_dtype_device(op, arg, t, ref_arg, ref):
    _check_type(t.dtype == ref.dtype, "lenet_ext.", op, ": expected ", arg,
                " to have the same dtype as ", ref_arg, " (", ref.dtype, "), but got ", t.dtype)
    _check(t.device == ref.device, "lenet_ext.", op, ": expected ", arg,
           " to be on the same device as ", ref_arg, " (", ref.device, "), but got ", t.device)


def check_dim(op, arg, t, dim, layout):
    _check(t.dim() == dim, "lenet_ext.", op, ": expected ", arg, " to be a ", dim, "-D tensor ",
           layout, ", but got a ", t.dim(), "-D tensor of shape ", t.shape)


def check_same_shape(op, arg, t, expected):
    _check(list(t.shape) == list(expected), "lenet_ext.", op, ": expected ", arg, " of shape ",
           expected, ", but got shape ", t.shape)


def check_array_size(op, arg, values, size):
    _check(len(values) == size, "lenet_ext.", op, ": expected ", arg, " to have ", size,
           " elements, but got ", len(values), " (", values, ")")


def check_int32_range(op, arg, values):
    for value in values:
        _check(value <= INT32_MAX, "lenet_ext.", op, ": expected ", arg,
               " to be at most 2147483647 (2^31 - 1), but got ", values)


def check_output_fits(op, shape, like):
    if not all(type(size) is int for size in shape):
        return  # symbolic sizes (torch.compile): the kernel checks the real ones
    total = like.element_size()
    for size in shape:
        total *= max(size, 1)
    _check(total <= INT64_MAX, "lenet_ext.", op, ": expected an output whose sizes (0 counted as "
           "1) multiply to fewer than 2^63 bytes, but its shape would be ", shape, " of ",
           like.dtype)


def check_output_mask(output_mask, size):
    """A bool[size] argument given another length: what the dispatcher raises before a C++ kernel
    runs, unboxing it into the kernel's std::array."""
    _check(len(output_mask) == size, "Tried to convert a List with ", len(output_mask),
           " elements to a fixed-size array of size ", size)


# csrc/shapes.h ----------------------------------------------------------------------------------

def dilated_extent(kernel, dilation):
    return _int64(dilation * (kernel - 1) + 1)


def conv_output_size(input, kernel, stride, padding, dilation):
    span = _int64(input + 2 * padding - dilated_extent(kernel, dilation))
    return 0 if span < 0 else span // stride + 1


def pool_output_size(input, kernel, stride, padding, dilation, ceil_mode):
    span = input + 2 * padding - dilated_extent(kernel, dilation)
    if span < 0 and not ceil_mode:
        return 0
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1  # floor, as div_rtn
    if ceil_mode and (out - 1) * stride >= input + padding:
        out -= 1
    return out


# csrc/linear.h ----------------------------------------------------------------------------------

def linear_output_shape(input, weight):
    return [*input.shape[:-1], weight.shape[0]]


def check_linear_args(input, weight, bias, op="linear"):
    check_dtype(op, "input", input)
    check_same_dtype_device(op, "weight", weight, "input", input)
    _check(input.dim() >= 1, "lenet_ext.", op, ": expected input to have at least 1 dimension "
           "(*, in_features), but got a 0-D tensor")
    check_dim(op, "weight", weight, 2, "(out_features, in_features)")
    _check(input.shape[-1] == weight.shape[1], "lenet_ext.", op, ": expected the last dimension of "
           "input to equal weight.size(1) = in_features = ", weight.shape[1], ", but got input of "
           "shape ", input.shape)
    if bias is not None:
        check_same_dtype_device(op, "bias", bias, "input", input)
        _check(bias.dim() == 1 and bias.shape[0] == weight.shape[0], "lenet_ext.", op,
               ": expected bias of shape [", weight.shape[0], "] (out_features), but got shape ",
               bias.shape)
    check_output_fits(op, linear_output_shape(input, weight), input)


def check_linear_backward_args(grad_output, input, weight):
    check_linear_args(input, weight, None, "linear_backward")
    check_same_dtype_device("linear_backward", "grad_output", grad_output, "input", input)
    check_same_shape("linear_backward", "grad_output", grad_output,
                     linear_output_shape(input, weight))


# csrc/conv2d.h ----------------------------------------------------------------------------------

def check_conv2d_args(input, weight, bias, stride, padding, dilation, groups, op="conv2d"):
    """The output shape (N, out_channels, out_h, out_w)."""
    check_dtype(op, "input", input)
    check_same_dtype_device(op, "weight", weight, "input", input)
    _check(input.dim() == 4, "lenet_ext.", op, ": expected input to be a 4-D tensor (N, C, H, W), "
           "but got a ", input.dim(), "-D tensor of shape ", input.shape, " (lenet_ext.functional."
           "conv2d also takes unbatched 3-D (C, H, W) input)")
    check_dim(op, "weight", weight, 4, "(out_channels, in_channels / groups, kernel_h, kernel_w)")
    check_array_size(op, "stride", stride, 2)
    check_array_size(op, "padding", padding, 2)
    check_array_size(op, "dilation", dilation, 2)
    _check(stride[0] > 0 and stride[1] > 0, "lenet_ext.", op,
           ": expected stride to be positive, but got ", stride)
    _check(padding[0] >= 0 and padding[1] >= 0, "lenet_ext.", op,
           ": expected padding to be non-negative, but got ", padding)
    least_dilation = 0 if input.numel() == 0 else 1
    _check(dilation[0] >= least_dilation and dilation[1] >= least_dilation, "lenet_ext.", op,
           ": expected dilation to be positive, but got ", dilation)
    _check(groups > 0, "lenet_ext.", op, ": expected groups to be positive, but got ", groups)
    check_int32_range(op, "stride", stride)
    check_int32_range(op, "padding", padding)
    check_int32_range(op, "dilation", dilation)

    out_channels = weight.shape[0]
    _check(out_channels > 0 and out_channels % groups == 0, "lenet_ext.", op, ": expected "
           "weight.size(0) (out_channels) to be a positive multiple of groups = ", groups,
           ", but got weight of shape ", weight.shape)
    channels = _int64(weight.shape[1] * groups)
    _check(input.shape[1] == channels, "lenet_ext.", op, ": expected input to have weight.size(1) "
           "* groups = ", weight.shape[1], " * ", groups, " = ", channels, " channels, but got "
           "input of shape ", input.shape)
    _check(weight.shape[2] > 0 and weight.shape[3] > 0, "lenet_ext.", op, ": expected a kernel of "
           "positive size, but got weight of shape ", weight.shape)
    _check(input.shape[2] > 0 and input.shape[3] > 0, "lenet_ext.", op, ": expected input of "
           "positive height and width, but got input of shape ", input.shape)
    if bias is not None:
        check_same_dtype_device(op, "bias", bias, "input", input)
        _check(bias.dim() == 1 and bias.shape[0] == out_channels, "lenet_ext.", op,
               ": expected bias of shape [", out_channels, "] (out_channels), but got shape ",
               bias.shape)

    shape = [input.shape[0], out_channels, 0, 0]
    for d in range(2):
        padded = input.shape[2 + d] + 2 * padding[d]
        extent = dilated_extent(weight.shape[2 + d], dilation[d])
        _check(extent <= padded, "lenet_ext.", op, ": expected the kernel, of size (",
               dilated_extent(weight.shape[2], dilation[0]), " x ",
               dilated_extent(weight.shape[3], dilation[1]), ") after dilation, to fit the padded "
               "input, but got padded input of size (", input.shape[2] + 2 * padding[0], " x ",
               input.shape[3] + 2 * padding[1], ")")
        shape[2 + d] = conv_output_size(input.shape[2 + d], weight.shape[2 + d], stride[d],
                                        padding[d], dilation[d])
    check_output_fits(op, shape, input)
    return shape


def check_conv2d_backward_args(grad_output, input, weight, stride, padding, dilation, groups):
    op = "conv2d_backward"
    output_shape = check_conv2d_args(input, weight, None, stride, padding, dilation, groups, op)
    check_same_dtype_device(op, "grad_output", grad_output, "input", input)
    check_same_shape(op, "grad_output", grad_output, output_shape)


# csrc/max_pool2d.h ------------------------------------------------------------------------------

def check_max_pool2d_args(input, kernel_size, stride, padding, dilation, ceil_mode,
                          op="max_pool2d"):
    """The output shape, of the input's rank."""
    check_dtype(op, "input", input)
    dim = input.dim()
    _check(dim == 3 or dim == 4, "lenet_ext.", op, ": expected input to be a 3-D (C, H, W) or "
           "4-D (N, C, H, W) tensor, but got a ", dim, "-D tensor of shape ", input.shape)
    _check(input.shape[-1] > 0 and input.shape[-2] > 0 and input.shape[-3] > 0,
           "lenet_ext.", op, ": expected input to have non-zero C, H and W (only N may be 0), "
           "but got shape ", input.shape)
    check_array_size(op, "kernel_size", kernel_size, 2)
    check_array_size(op, "stride", stride, 2)
    check_array_size(op, "padding", padding, 2)
    check_array_size(op, "dilation", dilation, 2)
    _check(kernel_size[0] > 0 and kernel_size[1] > 0, "lenet_ext.", op, ": expected kernel_size "
           "to be positive, but got ", kernel_size)
    _check(stride[0] > 0 and stride[1] > 0, "lenet_ext.", op, ": expected stride to be "
           "positive, but got ", stride)
    _check(dilation[0] > 0 and dilation[1] > 0, "lenet_ext.", op, ": expected dilation to be "
           "positive, but got ", dilation)
    check_int32_range(op, "kernel_size", kernel_size)
    check_int32_range(op, "stride", stride)
    check_int32_range(op, "dilation", dilation)
    _check(padding[0] >= 0 and padding[1] >= 0 and padding[0] <= kernel_size[0] // 2 and
           padding[1] <= kernel_size[1] // 2, "lenet_ext.", op, ": expected padding to be "
           "non-negative and at most half of kernel_size ", kernel_size, ", but got ", padding)
    shape = list(input.shape)
    for d in range(2):
        shape[dim - 2 + d] = pool_output_size(input.shape[dim - 2 + d], kernel_size[d], stride[d],
                                              padding[d], dilation[d], ceil_mode)
    out_h, out_w = shape[dim - 2], shape[dim - 1]
    _check(out_h >= 1 and out_w >= 1, "lenet_ext.", op, ": expected an output of at least 1x1, "
           "but input of shape ", input.shape, " with kernel_size ", kernel_size, ", stride ",
           stride, ", padding ", padding, ", dilation ", dilation, " and ceil_mode=", ceil_mode,
           " gives ", out_h, "x", out_w)
    return shape


def check_planes_and_indices(op, arg, t, indices):
    check_dtype(op, arg, t)
    _check(t.dim() == 3 or t.dim() == 4, "lenet_ext.", op, ": expected ", arg, " to be a 3-D "
           "(C, H, W) or 4-D (N, C, H, W) tensor, but got a ", t.dim(), "-D tensor of shape ",
           t.shape)
    _check_type(indices.dtype == torch.int64, "lenet_ext.", op, ": expected indices to have "
                "dtype int64, but got ", indices.dtype)
    _check(indices.device == t.device, "lenet_ext.", op, ": expected indices to be on the same "
           "device as ", arg, " (", t.device, "), but got ", indices.device)


def check_max_pool2d_backward_args(grad_output, indices, input_size):
    op = "max_pool2d_backward"
    check_planes_and_indices(op, "grad_output", grad_output, indices)
    dim = grad_output.dim()
    check_same_shape(op, "indices", indices, grad_output.shape)
    check_array_size(op, "input_size", input_size, dim)
    leading_match = all(input_size[d] == grad_output.shape[d] for d in range(dim - 2))
    _check(leading_match and input_size[dim - 2] >= 0 and input_size[dim - 1] >= 0,
           "lenet_ext.max_pool2d_backward: expected input_size to match grad_output (shape ",
           grad_output.shape, ") in all but the last two dimensions and to be non-negative, "
           "but got ", input_size)
    check_output_fits(op, input_size, grad_output)


def check_max_pool2d_gather_args(input, indices):
    op = "max_pool2d_gather"
    check_planes_and_indices(op, "input", input, indices)
    dim = input.dim()
    leading_match = indices.dim() == dim and all(indices.shape[d] == input.shape[d]
                                                 for d in range(dim - 2))
    _check(leading_match, "lenet_ext.max_pool2d_gather: expected indices to match input "
           "(shape ", input.shape, ") in all but the last two dimensions, but got shape ",
           indices.shape)


# csrc/conv2d_relu_max_pool2d.h and cpu/fused/conv2d_relu_max_pool2d.cpp ---------------------------

def check_conv2d_relu_max_pool2d_args(input, weight, op):
    """The output shape (N, out_channels, conv_h // 2, conv_w // 2)."""
    check_dtype(op, "input", input)
    check_same_dtype_device(op, "weight", weight, "input", input)
    check_dim(op, "input", input, 4, "(N, C, H, W)")
    check_dim(op, "weight", weight, 4, "(out_channels, in_channels, kernel_h, kernel_w)")
    _check(weight.shape[0] > 0 and weight.shape[2] > 0 and weight.shape[3] > 0, "lenet_ext.", op,
           ": expected weight with positive out_channels and kernel size, but got weight of "
           "shape ", weight.shape)
    _check(input.shape[1] == weight.shape[1], "lenet_ext.", op, ": expected input to have "
           "weight.size(1) = ", weight.shape[1], " channels, but got input of shape ", input.shape)
    conv_h = input.shape[2] - weight.shape[2] + 1
    conv_w = input.shape[3] - weight.shape[3] + 1
    _check(conv_h >= 2 and conv_w >= 2, "lenet_ext.", op, ": expected input at least ",
           weight.shape[2] + 1, " x ", weight.shape[3] + 1, " (kernel + 1, so that the 2x2 "
           "pool has a window), but got input of shape ", input.shape)
    return [input.shape[0], weight.shape[0], conv_h // 2, conv_w // 2]


def check_conv2d_relu_max_pool2d_bias(bias, input, weight, op="conv2d_relu_max_pool2d"):
    check_same_dtype_device(op, "bias", bias, "input", input)
    check_same_shape(op, "bias", bias, [weight.shape[0]])


def check_conv2d_relu_max_pool2d_backward_args(grad_output, output, indices, input, weight):
    op = "conv2d_relu_max_pool2d_backward"
    output_sizes = check_conv2d_relu_max_pool2d_args(input, weight, op)
    check_same_dtype_device(op, "grad_output", grad_output, "input", input)
    check_same_shape(op, "grad_output", grad_output, output_sizes)
    check_same_dtype_device(op, "output", output, "input", input)
    check_same_shape(op, "output", output, output_sizes)
    _check_type(indices.dtype == torch.int64, "lenet_ext.", op,
                ": expected indices to have dtype int64, but got ", indices.dtype)
    _check(indices.device == input.device, "lenet_ext.", op, ": expected indices to be on "
           "the same device as input (", input.device, "), but got ", indices.device)
    check_same_shape(op, "indices", indices, output_sizes)


# cpu/fused/lenet.cpp ----------------------------------------------------------------------------

LENET_PARAMETERS = ("conv1_weight", "conv1_bias", "conv2_weight", "conv2_bias", "fc1_weight",
                    "fc1_bias", "fc2_weight", "fc2_bias", "fc3_weight", "fc3_bias")
LENET_PARAMETER_SHAPES = ((6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,),
                          (84, 120), (84,), (10, 84), (10,))
# lenet's outputs after the logits: name, shape after the batch dimension, dtype (None: input's)
LENET_ACTIVATIONS = (("pool1", (6, 14, 14), None), ("pool1_indices", (6, 14, 14), torch.uint8),
                     ("pool2", (16, 5, 5), None), ("pool2_indices", (16, 5, 5), torch.uint8),
                     ("fc1_relu", (120,), None), ("fc2_relu", (84,), None))


def check_lenet_input(op, input):
    check_dtype(op, "input", input)
    check_dim(op, "input", input, 4, "(N, 1, 32, 32)")
    _check(input.shape[1] == 1 and input.shape[2] == 32 and input.shape[3] == 32, "lenet_ext.", op,
           ": expected input of shape (N, 1, 32, 32), but got shape ", input.shape)


def check_like_input(op, arg, t, shape, input):
    check_same_dtype_device(op, arg, t, "input", input)
    check_same_shape(op, arg, t, shape)


def check_lenet_indices(op, arg, t, shape, input):
    _check_type(t.dtype == torch.uint8, "lenet_ext.", op, ": expected ", arg,
                " to have dtype uint8 (window codes, as lenet returns them), but got ", t.dtype)
    _check(t.device == input.device, "lenet_ext.", op, ": expected ", arg, " to be on the "
           "same device as input (", input.device, "), but got ", t.device)
    check_same_shape(op, arg, t, shape)


def check_lenet_args(input, parameters):
    check_lenet_input("lenet", input)
    for name, shape, parameter in zip(LENET_PARAMETERS, LENET_PARAMETER_SHAPES, parameters):
        check_like_input("lenet", name, parameter, shape, input)


def check_lenet_backward_args(grad_logits, input, weights, activations):
    op = "lenet_backward"
    check_lenet_input(op, input)
    batch = input.shape[0]
    for name, shape, weight in zip(LENET_PARAMETERS[::2], LENET_PARAMETER_SHAPES[::2], weights):
        check_like_input(op, name, weight, shape, input)
    check_like_input(op, "grad_logits", grad_logits, (batch, 10), input)
    for (name, shape, dtype), activation in zip(LENET_ACTIVATIONS, activations):
        check = check_lenet_indices if dtype is not None else check_like_input
        check(op, name, activation, (batch, *shape), input)
