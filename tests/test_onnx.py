"""lenet_ext.onnx: models on our ops export to standard ONNX ops (torch.onnx's dynamo exporter with
our translation table), and onnxruntime's outputs equal ours within 1e-5: LeNet and FusedLeNet at
batch 1 and a dynamic batch, conv2d and max_pool2d with their stride / padding / dilation / groups /
ceil_mode variants, linear at every input rank, the fused ops with all their outputs. An op without
a translation is refused by name."""
import pytest
import torch

import lenet_ext
from lenet_ext import functional as F
from lenet_ext.models import FusedLeNet, LeNet

ort = pytest.importorskip("onnxruntime", reason="the onnx extra: pip install onnx onnxscript onnxruntime")
pytest.importorskip("onnxscript", reason="the onnx extra: pip install onnx onnxscript onnxruntime")

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


class Call(torch.nn.Module):
    """A module computing fn(*inputs) with fixed parameters (random, fresh per test)."""

    def __init__(self, fn, *parameters):
        super().__init__()
        self.fn = fn
        self.params = torch.nn.ParameterList(parameters)

    def forward(self, *inputs):
        return self.fn(*inputs, *self.params)


def export_and_run(model, inputs, runs=None, **kwargs):
    """Exports model on inputs; returns onnxruntime's outputs on each tuple of `runs` (default: the
    inputs), as torch tensors, and ours on the same, each a list."""
    program = lenet_ext.onnx.export(model, inputs, verbose=False, **kwargs)
    assert {node.domain for node in program.model.graph} <= {"", "ai.onnx"}  # standard ops only
    assert not program.model.functions
    session = ort.InferenceSession(program.model_proto.SerializeToString())
    results = []
    for run in runs or [inputs]:
        feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), run)}
        theirs = [torch.from_numpy(out) for out in session.run(None, feed)]
        with torch.no_grad():
            ours = model(*run)
        results.append((theirs, list(ours) if isinstance(ours, tuple) else [ours]))
    return results


def assert_same(results):
    for theirs, ours in results:
        assert len(theirs) == len(ours)
        for a, b in zip(theirs, ours):
            torch.testing.assert_close(a, b, **TOLERANCE)


@pytest.mark.parametrize("network", [LeNet, FusedLeNet])
def test_network_at_batch_1(network):
    assert_same(export_and_run(network().eval(), (torch.randn(1, 1, 32, 32),)))


@pytest.mark.parametrize("network,ops", [(LeNet, {"conv2d", "relu", "max_pool2d", "linear"}),
                                         (FusedLeNet, {"lenet"})])
def test_network_exports_our_ops(network, ops):
    # what was translated: our ops, not a decomposition into stock ones
    program = lenet_ext.onnx.export(network().eval(), (torch.randn(1, 1, 32, 32),), verbose=False)
    targets = {str(node.target) for node in program.exported_program.graph.nodes
               if node.op == "call_function" and str(node.target).startswith("lenet_ext.")}
    assert targets == {f"lenet_ext.{op}.default" for op in ops}


@pytest.mark.parametrize("network", [LeNet, FusedLeNet])
def test_network_with_a_dynamic_batch(network):
    runs = [(torch.randn(batch, 1, 32, 32),) for batch in (1, 3, 17)]
    assert_same(export_and_run(network().eval(), (torch.randn(4, 1, 32, 32),), runs,
                               dynamic_shapes=({0: torch.export.Dim("batch")},)))


@pytest.mark.parametrize("network", [LeNet, FusedLeNet])
def test_network_written_to_a_file(network, tmp_path):
    net, images = network().eval(), torch.randn(2, 1, 32, 32)
    lenet_ext.onnx.export(net, (images,), tmp_path / "lenet.onnx", verbose=False)
    session = ort.InferenceSession(str(tmp_path / "lenet.onnx"))
    (logits,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), net(images).detach(), **TOLERANCE)


# conv2d: (input shape, weight shape, keyword arguments)
CONVS = {
    "plain": ((2, 3, 9, 8), (4, 3, 3, 3), {}),
    "stride": ((2, 3, 9, 8), (4, 3, 3, 2), dict(stride=(2, 3))),
    "padding": ((2, 3, 9, 8), (4, 3, 3, 3), dict(padding=(2, 1))),
    "dilation": ((2, 3, 9, 8), (4, 3, 3, 2), dict(dilation=(2, 3), padding=1)),
    "groups": ((2, 6, 9, 8), (4, 3, 3, 3), dict(groups=2, stride=2)),
    "depthwise": ((2, 4, 9, 8), (8, 1, 3, 3), dict(groups=4, padding=1)),
    "same-even-kernel": ((2, 3, 9, 8), (4, 3, 4, 2), dict(padding="same")),
    "unbatched": ((3, 9, 8), (4, 3, 5, 5), {}),
}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("case", CONVS)
def test_conv2d(case, bias):
    input_shape, weight_shape, kwargs = CONVS[case]
    params = [torch.randn(weight_shape)] + ([torch.randn(weight_shape[0])] if bias else [])
    model = Call(lambda x, w, b=None: F.conv2d(x, w, b, **kwargs), *params)
    assert_same(export_and_run(model, (torch.randn(input_shape),)))


# max_pool2d: (input shape, keyword arguments)
POOLS = {
    "2x2": ((2, 3, 8, 8), dict(kernel_size=2)),
    "stride": ((2, 3, 9, 8), dict(kernel_size=3, stride=(2, 1))),
    "padding": ((2, 3, 9, 8), dict(kernel_size=3, stride=2, padding=1)),
    "dilation": ((2, 3, 9, 8), dict(kernel_size=(2, 3), dilation=(2, 2), padding=(1, 0))),
    "ceil_mode": ((2, 3, 9, 8), dict(kernel_size=3, stride=2, ceil_mode=True)),
    # torch's rule drops a last window that would start in the right padding (5 -> 3, not 4)
    "ceil_mode-last-window": ((2, 3, 5, 5), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    "unbatched": ((3, 9, 8), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
}


@pytest.mark.parametrize("return_indices", [False, True], ids=["output", "indices"])
@pytest.mark.parametrize("case", POOLS)
def test_max_pool2d(case, return_indices):
    input_shape, kwargs = POOLS[case]
    model = Call(lambda x: F.max_pool2d(x, **kwargs, return_indices=return_indices))
    assert_same(export_and_run(model, (torch.randn(input_shape),)))


@pytest.mark.parametrize("input_shape", [(5,), (3, 5), (2, 3, 5)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_linear_then_relu(input_shape, bias):
    params = [torch.randn(4, 5)] + ([torch.randn(4)] if bias else [])
    model = Call(lambda x, w, b=None: F.relu(F.linear(x, w, b)), *params)
    assert_same(export_and_run(model, (torch.randn(input_shape),)))


def test_conv2d_relu_max_pool2d_output_and_indices():
    model = Call(torch.ops.lenet_ext.conv2d_relu_max_pool2d, torch.randn(4, 3, 3, 3), torch.randn(4))
    assert_same(export_and_run(model, (torch.randn(2, 3, 11, 10),)))


def test_lenet_op_with_its_saved_activations():
    # every output of the whole-network op: logits, pools, their window codes (uint8), fc ReLUs
    params = [p.detach() for p in LeNet().parameters()]  # the network's random initialisation
    model = Call(torch.ops.lenet_ext.lenet, *params)
    results = export_and_run(model, (torch.randn(3, 1, 32, 32),))
    assert [t.dtype for t in results[0][0]] == [t.dtype for t in results[0][1]]
    assert_same(results)


def test_an_op_without_a_translation_is_refused_by_name():
    model = Call(lambda g, y: torch.ops.lenet_ext.relu_backward(g, y))
    with pytest.raises(NotImplementedError, match=r"^lenet_ext\.onnx\.export: no ONNX translation "
                                                   r"for lenet_ext\.relu_backward\.default .*"
                                                   r"forward ops conv2d, .*relu"):
        lenet_ext.onnx.export(model, (torch.randn(3), torch.randn(3)))
