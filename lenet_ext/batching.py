"""vmap batching rules of the lenet_ext ops, so that torch.func.vmap (and per-sample gradients,
vmap(grad(...))) calls our kernels once for the whole batch instead of once per sample.

Each rule folds the vmapped dimension into a dimension the op already has:
- into the batch (N) dimension when only activations are vmapped (one call, the ordinary kernel);
- into the channels, as groups, when a weight or bias is vmapped, or when a weight's gradient is
  wanted per sample: a conv2d with weights (B, O, C/g, kh, kw) is one conv2d with B*g groups, and a
  linear layer is a 1x1 convolution, so a per-sample linear (or its weight gradient, the product
  that vmap(grad(...)) asks for) is one grouped 1x1 conv2d.
The fused ops run their own kernel for vmapped activations; with a vmapped weight or a per-sample
weight gradient they are composed from the per-op rules (conv2d, relu, max_pool2d, linear).

Rules are written against the op's per-sample semantics: a vmapped tensor arrives with its vmap
dimension moved to the front, an unvmapped one as given, and a rule returns tensors vmapped at 0.
"""
import math

import torch

from .ops import lib as ops

_lib = torch.library.Library("lenet_ext", "FRAGMENT")


def _rule(name):
    """Registers fn(batch_size, batched, *args) as the vmap rule of lenet_ext::<name>. ``batched``
    says, per argument, whether it carries the vmap dimension (then at dim 0)."""
    op = getattr(ops, name).default

    def register(fn):
        def vmap_rule(info, in_dims, *args):
            # in_dims mirrors the arguments' structure: a list argument (stride) gets a list
            dims = [dim if isinstance(arg, torch.Tensor) else None for arg, dim in zip(args, in_dims)]
            fronted = [arg if dim is None else arg.movedim(dim, 0) for arg, dim in zip(args, dims)]
            try:
                output = fn(info.batch_size, [dim is not None for dim in dims], *fronted)
            except RuntimeError:
                # A bad argument shows in the folded shapes; the op's own message about one sample
                # names the argument as the caller wrote it.
                op(*(arg if dim is None else arg.select(dim, 0) for arg, dim in zip(args, dims)))
                raise
            if isinstance(output, torch.Tensor):
                return output, 0
            return output, tuple(None if out is None else 0 for out in output)

        torch.library.register_vmap(op, vmap_rule, lib=_lib)
        return fn
    return register


def _expand(tensor, batched, batch_size):
    """The tensor with the vmap dimension in front: an unvmapped one is expanded (a view)."""
    return tensor if batched else tensor.expand(batch_size, *tensor.shape)


def _refuse(op, tensor, *args):
    """Has the op judge one sample (and raise) where folding would accept a rank it refuses."""
    op(tensor[0], *args)
    raise AssertionError(f"{op} accepted a rank its batching rule does not")


def _to_groups(tensor):
    """(B, N, C, ...) -> (N, B * C, ...): sample b's channels become groups b * g ... b * g + g - 1."""
    return tensor.transpose(0, 1).flatten(1, 2)


def _from_groups(tensor, batch_size):
    """(N, B * C, ...) -> (B, N, C, ...)."""
    return tensor.unflatten(1, (batch_size, tensor.shape[1] // batch_size)).transpose(0, 1)


# relu ------------------------------------------------------------------------------------------

@_rule("relu")
def relu(batch_size, batched, input):
    return ops.relu(input)


@_rule("relu_backward")
def relu_backward(batch_size, batched, grad_output, result):
    return ops.relu_backward(*(_expand(t, b, batch_size) for t, b in zip((grad_output, result), batched)))


# conv2d ----------------------------------------------------------------------------------------

@_rule("conv2d")
def conv2d(batch_size, batched, input, weight, bias, stride, padding, dilation, groups):
    input = _expand(input, batched[0], batch_size)
    if not (batched[1] or batched[2]):
        return ops.conv2d(input.flatten(0, 1), weight, bias, stride, padding, dilation,
                          groups).unflatten(0, input.shape[:2])
    weight = _expand(weight, batched[1], batch_size).flatten(0, 1)
    if bias is not None:
        bias = _expand(bias, batched[2], batch_size).flatten()
    output = ops.conv2d(_to_groups(input), weight, bias, stride, padding, dilation,
                        groups * batch_size)
    return _from_groups(output, batch_size)


@_rule("conv2d_backward")
def conv2d_backward(batch_size, batched, grad_output, input, weight, stride, padding, dilation,
                    groups, output_mask):
    grad_output = _expand(grad_output, batched[0], batch_size)
    input = _expand(input, batched[1], batch_size)
    grad_input = grad_weight = grad_bias = None
    if not batched[2]:
        # grad_input takes the whole batch as one; the weight's gradients are per sample (below)
        if output_mask[0]:
            grad_input = ops.conv2d_backward(grad_output.flatten(0, 1), input.flatten(0, 1), weight,
                                             stride, padding, dilation, groups,
                                             [True, False, False])[0].unflatten(0, input.shape[:2])
        output_mask = [False, *output_mask[1:]]
    if any(output_mask):
        grads = ops.conv2d_backward(_to_groups(grad_output), _to_groups(input),
                                    _expand(weight, batched[2], batch_size).flatten(0, 1), stride,
                                    padding, dilation, groups * batch_size, output_mask)
        if output_mask[0]:
            grad_input = _from_groups(grads[0], batch_size)
        if output_mask[1]:
            grad_weight = grads[1].unflatten(0, (batch_size, -1))
        if output_mask[2]:
            grad_bias = grads[2].unflatten(0, (batch_size, -1))
    return grad_input, grad_weight, grad_bias


# linear: a 1x1 convolution of the flattened leading dimensions' rows -----------------------------

def _rows_as_images(tensor):
    """(B, *, features) -> (B, rows, features, 1, 1)."""
    return tensor.reshape(tensor.shape[0], math.prod(tensor.shape[1:-1]), tensor.shape[-1], 1, 1)


@_rule("linear")
def linear(batch_size, batched, input, weight, bias):
    input = _expand(input, batched[0], batch_size)
    if not (batched[1] or batched[2]):
        return ops.linear(input, weight, bias)
    output = conv2d(batch_size, [True, *batched[1:]], _rows_as_images(input), weight[..., None, None],
                    bias, [1, 1], [0, 0], [1, 1], 1)
    return output.reshape(*input.shape[:-1], weight.shape[-2])


@_rule("linear_backward")
def linear_backward(batch_size, batched, grad_output, input, weight, output_mask):
    grad_output = _expand(grad_output, batched[0], batch_size)
    input = _expand(input, batched[1], batch_size)
    grad_input = None
    if not batched[2]:
        if output_mask[0]:
            grad_input = ops.linear_backward(grad_output, input, weight, [True, False, False])[0]
        output_mask = [False, *output_mask[1:]]
    if not any(output_mask):
        return grad_input, None, None
    grads = conv2d_backward(batch_size, [True, True, batched[2]], _rows_as_images(grad_output),
                            _rows_as_images(input), weight[..., None, None], [1, 1], [0, 0],
                            [1, 1], 1, output_mask)
    if output_mask[0]:
        grad_input = grads[0].reshape(input.shape)
    return grad_input, None if grads[1] is None else grads[1][..., 0, 0], grads[2]


# max_pool2d ------------------------------------------------------------------------------------

@_rule("max_pool2d")
def max_pool2d(batch_size, batched, input, kernel_size, stride, padding, dilation, ceil_mode):
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    if input.dim() == 4:  # (C, H, W) samples: the vmap dimension is the batch
        return ops.max_pool2d(input, *args)
    if input.dim() != 5:
        _refuse(ops.max_pool2d, input, *args)
    output, indices = ops.max_pool2d(input.flatten(0, 1), *args)
    return output.unflatten(0, input.shape[:2]), indices.unflatten(0, input.shape[:2])


@_rule("max_pool2d_backward")
def max_pool2d_backward(batch_size, batched, grad_output, indices, input_size):
    grad_output = _expand(grad_output, batched[0], batch_size)
    indices = _expand(indices, batched[1], batch_size)
    if len(input_size) == 3:
        return ops.max_pool2d_backward(grad_output, indices, [batch_size, *input_size])
    if len(input_size) != 4:
        _refuse(ops.max_pool2d_backward, grad_output, indices[0], input_size)
    grad_input = ops.max_pool2d_backward(grad_output.flatten(0, 1), indices.flatten(0, 1),
                                         [batch_size * input_size[0], *input_size[1:]])
    return grad_input.unflatten(0, (batch_size, input_size[0]))


@_rule("max_pool2d_gather")
def max_pool2d_gather(batch_size, batched, input, indices):
    input, indices = _expand(input, batched[0], batch_size), _expand(indices, batched[1], batch_size)
    if input.dim() == 4:  # unbatched planes: the vmap dimension is the batch
        return ops.max_pool2d_gather(input, indices)
    if input.dim() != 5:
        _refuse(ops.max_pool2d_gather, input, indices[0])
    return ops.max_pool2d_gather(input.flatten(0, 1), indices.flatten(0, 1)).unflatten(
        0, input.shape[:2])


# conv2d_relu_max_pool2d ------------------------------------------------------------------------

@_rule("conv2d_relu_max_pool2d")
def conv2d_relu_max_pool2d(batch_size, batched, input, weight, bias):
    input = _expand(input, batched[0], batch_size)
    if not (batched[1] or batched[2]):
        output, indices = ops.conv2d_relu_max_pool2d(input.flatten(0, 1), weight, bias)
        return output.unflatten(0, input.shape[:2]), indices.unflatten(0, input.shape[:2])
    activation = relu(batch_size, [True], conv2d(batch_size, [True, *batched[1:]], input, weight,
                                                 bias, [1, 1], [0, 0], [1, 1], 1))
    return max_pool2d(batch_size, [True], activation, [2, 2], [2, 2], [0, 0], [1, 1], False)


@_rule("conv2d_relu_max_pool2d_backward")
def conv2d_relu_max_pool2d_backward(batch_size, batched, grad_output, output, indices, input,
                                    weight, output_mask):
    grad_output, output, indices, input = (
        _expand(t, b, batch_size) for t, b in zip((grad_output, output, indices, input), batched))
    if not batched[4] and not (output_mask[1] or output_mask[2]):
        grad_input = ops.conv2d_relu_max_pool2d_backward(
            *(t.flatten(0, 1) for t in (grad_output, output, indices, input)), weight,
            output_mask)[0]
        return grad_input.unflatten(0, input.shape[:2]), None, None
    # The pool passes the gradient to its argmax, where the ReLU's result is the pooled output.
    grad_pooled = relu_backward(batch_size, [True, True], grad_output, output)
    conv_size = [input.shape[1], weight.shape[-4], *(input.shape[d] - weight.shape[d] + 1
                                                     for d in (-2, -1))]
    grad_conv = max_pool2d_backward(batch_size, [True, True], grad_pooled, indices, conv_size)
    return conv2d_backward(batch_size, [True, True, batched[4]], grad_conv, input, weight, [1, 1],
                           [0, 0], [1, 1], 1, output_mask)


# lenet: the whole network ----------------------------------------------------------------------
# Its pools' indices are window codes dy * 2 + dx (uint8); the composed forms use max_pool2d's
# flat offsets into the conv plane of width `conv_w`.

def _window_codes(offsets, conv_w):
    return ((offsets // conv_w % 2) * 2 + offsets % conv_w % 2).to(torch.uint8)


def _offsets(codes, conv_w):
    pooled_h, pooled_w = codes.shape[-2:]
    row = torch.arange(pooled_h, device=codes.device)[:, None] * 2 + (codes // 2).long()
    col = torch.arange(pooled_w, device=codes.device) * 2 + (codes % 2).long()
    return row * conv_w + col


@_rule("lenet")
def lenet(batch_size, batched, input, *parameters):
    input = _expand(input, batched[0], batch_size)
    if not any(batched[1:]):
        outputs = ops.lenet(input.flatten(0, 1), *parameters)
        return tuple(t.unflatten(0, input.shape[:2]) for t in outputs)
    conv1, conv2, fc1, fc2, fc3 = zip(parameters[::2], parameters[1::2], batched[1::2],
                                      batched[2::2])
    pool1, pool1_offsets = conv2d_relu_max_pool2d(batch_size, [True, *conv1[2:]], input, *conv1[:2])
    pool2, pool2_offsets = conv2d_relu_max_pool2d(batch_size, [True, *conv2[2:]], pool1,
                                                  *conv2[:2])
    fc1_relu = relu(batch_size, [True], linear(batch_size, [True, *fc1[2:]], pool2.flatten(-3),
                                               *fc1[:2]))
    fc2_relu = relu(batch_size, [True], linear(batch_size, [True, *fc2[2:]], fc1_relu, *fc2[:2]))
    logits = linear(batch_size, [True, *fc3[2:]], fc2_relu, *fc3[:2])
    return (logits, pool1, _window_codes(pool1_offsets, 28), pool2,
            _window_codes(pool2_offsets, 10), fc1_relu, fc2_relu)


@_rule("lenet_backward")
def lenet_backward(batch_size, batched, grad_logits, input, conv1_weight, conv2_weight, fc1_weight,
                   fc2_weight, fc3_weight, pool1, pool1_indices, pool2, pool2_indices, fc1_relu,
                   fc2_relu, output_mask):
    weights = (conv1_weight, conv2_weight, fc1_weight, fc2_weight, fc3_weight)
    weights_batched = [batched[2 + i] for i in range(5)]
    grad_logits, input, pool1, pool1_indices, pool2, pool2_indices, fc1_relu, fc2_relu = (
        _expand(t, batched[i], batch_size) for t, i in zip(
            (grad_logits, input, pool1, pool1_indices, pool2, pool2_indices, fc1_relu, fc2_relu),
            (0, 1, 7, 8, 9, 10, 11, 12)))
    if not any(output_mask):
        return (None,) * 11
    if not any(weights_batched) and not any(output_mask[1:]):
        grad_input = ops.lenet_backward(
            *(t.flatten(0, 1) for t in (grad_logits, input)), *weights,
            *(t.flatten(0, 1) for t in (pool1, pool1_indices, pool2, pool2_indices, fc1_relu,
                                        fc2_relu)), output_mask)[0]
        return (grad_input.unflatten(0, input.shape[:2]),) + (None,) * 10
    grads = [None] * 11  # input, then (weight, bias) of conv1, conv2, fc1, fc2, fc3

    def layer_mask(layer):  # (input of the layer, its weight, its bias): what is wanted
        return [any(output_mask[:1 + 2 * layer]), *output_mask[1 + 2 * layer:3 + 2 * layer]]

    grad = grad_logits
    for layer, layer_input in ((4, fc2_relu), (3, fc1_relu), (2, pool2.flatten(-3))):
        grad, grads[1 + 2 * layer], grads[2 + 2 * layer] = linear_backward(
            batch_size, [True, True, weights_batched[layer]], grad, layer_input, weights[layer],
            layer_mask(layer))
        if grad is None:
            return tuple(grads)
        if layer > 2:
            grad = relu_backward(batch_size, [True, True], grad, layer_input)
    grad = grad.unflatten(-1, pool2.shape[-3:])
    for layer, (output, codes, layer_input, conv_w) in ((1, (pool2, pool2_indices, pool1, 10)),
                                                        (0, (pool1, pool1_indices, input, 28))):
        grad, grads[1 + 2 * layer], grads[2 + 2 * layer] = conv2d_relu_max_pool2d_backward(
            batch_size, [True, True, True, True, weights_batched[layer]], grad, output,
            _offsets(codes, conv_w), layer_input, weights[layer], layer_mask(layer))
        if grad is None:
            break
    grads[0] = grad
    return tuple(grads)
