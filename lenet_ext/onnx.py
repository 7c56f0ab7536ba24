"""ONNX export of models built on lenet_ext's ops: each forward op translated to standard ONNX ops
(Conv, MaxPool, Gemm or MatMul + Add, Relu; the fused ops as their compositions), for torch.onnx's
dynamo exporter.

    lenet_ext.onnx.export(model.eval(), (images,), "lenet.onnx")

Needs ``pip install onnx onnxscript`` (the ``onnx`` extra; onnxruntime runs the file). Outputs the
model does not use (max_pool2d's indices, lenet's saved activations) are translated too and then
removed by the exporter's optimizer.
"""
import torch

_ops = torch.ops.lenet_ext


def _pool_indices(op, input, pooled_indices):
    """ONNX's MaxPool indexes the whole (N, C, H, W) tensor; ours, as torch's, one H x W plane."""
    plane = op.ReduceProd(op.Shape(input, start=2), keepdims=0)
    return op.Mod(pooled_indices, plane)


def translation_table():
    """{lenet_ext forward op: onnxscript function}, for torch.onnx.export's custom_translation_table."""
    from onnxscript import opset18 as op

    def relu(input):
        return op.Relu(input)

    def linear(input, weight, bias=None):
        if len(input.shape) == 2:
            return op.Gemm(input, weight, bias, transB=1) if bias is not None else \
                op.Gemm(input, weight, transB=1)
        output = op.MatMul(input, op.Transpose(weight, perm=[1, 0]))
        return output if bias is None else op.Add(output, bias)

    def conv2d(input, weight, bias, stride, padding, dilation, groups):
        attributes = dict(strides=list(stride), pads=[*padding, *padding], dilations=list(dilation),
                          group=groups)
        if bias is None:
            return op.Conv(input, weight, **attributes)
        return op.Conv(input, weight, bias, **attributes)

    def max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode):
        unbatched = len(input.shape) == 3
        batched = op.Unsqueeze(input, [0]) if unbatched else input
        output, indices = op.MaxPool(batched, kernel_shape=list(kernel_size), strides=list(stride),
                                     pads=[*padding, *padding], dilations=list(dilation),
                                     ceil_mode=int(ceil_mode))
        indices = _pool_indices(op, batched, indices)
        if unbatched:
            return op.Squeeze(output, [0]), op.Squeeze(indices, [0])
        return output, indices

    def conv2d_relu_max_pool2d(input, weight, bias):
        activation = op.Relu(op.Conv(input, weight, bias))
        output, indices = op.MaxPool(activation, kernel_shape=[2, 2], strides=[2, 2])
        return output, _pool_indices(op, activation, indices)

    def lenet(input, conv1_weight, conv1_bias, conv2_weight, conv2_bias, fc1_weight, fc1_bias,
              fc2_weight, fc2_bias, fc3_weight, fc3_bias):
        # the saved activations too: the pools' argmax as window codes dy * 2 + dx (uint8)
        def codes(indices, conv_w):
            width = op.Constant(value_int=conv_w)
            two = op.Constant(value_int=2)
            dy, dx = op.Mod(op.Div(indices, width), two), op.Mod(op.Mod(indices, width), two)
            return op.Cast(op.Add(op.Mul(dy, two), dx), to=2)  # 2: UINT8

        pool1, pool1_offsets = conv2d_relu_max_pool2d(input, conv1_weight, conv1_bias)
        pool2, pool2_offsets = conv2d_relu_max_pool2d(pool1, conv2_weight, conv2_bias)
        fc1_relu = op.Relu(op.Gemm(op.Flatten(pool2, axis=1), fc1_weight, fc1_bias, transB=1))
        fc2_relu = op.Relu(op.Gemm(fc1_relu, fc2_weight, fc2_bias, transB=1))
        logits = op.Gemm(fc2_relu, fc3_weight, fc3_bias, transB=1)
        return (logits, pool1, codes(pool1_offsets, 28), pool2, codes(pool2_offsets, 10), fc1_relu,
                fc2_relu)

    return {_ops.relu.default: relu, _ops.linear.default: linear, _ops.conv2d.default: conv2d,
            _ops.max_pool2d.default: max_pool2d,
            _ops.conv2d_relu_max_pool2d.default: conv2d_relu_max_pool2d,
            _ops.lenet.default: lenet}


def export(model, args, f=None, **kwargs):
    """torch.onnx.export(model, args, f, dynamo=True, **kwargs) with our ops translated
    (translation_table()); returns its ONNXProgram. Any other lenet_ext op in the exported graph
    (a backward op) is refused by name before translation."""
    table = translation_table()
    if isinstance(model, torch.nn.Module):
        # An inference graph: with grad, max_pool2d's autograd would record the input's size as
        # integers, which makes a dynamic batch size a constant.
        with torch.no_grad():
            exported = torch.export.export(model, tuple(args), kwargs=kwargs.pop("kwargs", None),
                                           dynamic_shapes=kwargs.pop("dynamic_shapes", None))
    else:
        exported = model
    untranslated = sorted({str(node.target) for node in exported.graph.nodes
                           if node.op == "call_function" and str(node.target).startswith("lenet_ext.")
                           and node.target not in table})
    if untranslated:
        translated = ", ".join(sorted(str(op).split(".")[1] for op in table))
        raise NotImplementedError(
            f"lenet_ext.onnx.export: no ONNX translation for {', '.join(untranslated)} in the "
            f"exported graph; the translated ops are the forward ops {translated}")
    return torch.onnx.export(exported, tuple(args), f, dynamo=True, custom_translation_table=table,
                             **kwargs)
