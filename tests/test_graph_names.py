"""Our autograd nodes show their names wherever ATen's do: repr(grad_fn), grad_fn.name(),
next_functions, a traversal of the graph (torch.autograd.graph.Node) and the profiler. The walk is
the one of PyTorch's "Neural Networks" tutorial, from an MSE loss back through LeNet."""
import re
import sys

import pytest
import torch

import lenet_ext
from lenet_ext import functional as F


def lenet_loss(model, create_graph=False):
    """The tutorial's loss on LeNet (or FusedLeNet); with create_graph, the squared norm of its
    gradient w.r.t. the input instead, whose graph holds the backward ops' nodes."""
    net = getattr(lenet_ext.models, model)()
    x = torch.randn(2, 1, 32, 32, requires_grad=create_graph)
    loss = torch.nn.MSELoss()(net(x), torch.randn(2, 10))
    if not create_graph:
        return loss
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    return grad.pow(2).sum()


def graph_nodes(root):
    """Every node reachable from root through next_functions, each once."""
    seen, stack, nodes = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return nodes


def assert_named(node):
    name = type(node).__name__
    assert re.fullmatch(rf"<{name} object at 0x[0-9a-f]+>", repr(node)), repr(node)
    assert name != "CppFunction"
    assert isinstance(node, torch.autograd.graph.Node)
    if node.name().startswith("lenet_ext::"):
        assert node.name() == f"lenet_ext::{name}"


def ours(nodes):
    return {type(node).__name__ for node in nodes if node.name().startswith("lenet_ext::")}


def test_tutorial_chain():
    loss = lenet_loss("LeNet")
    assert re.fullmatch(r"<MseLossBackward0 object at 0x[0-9a-f]+>", repr(loss.grad_fn))
    fc3 = loss.grad_fn.next_functions[0][0]
    assert re.fullmatch(r"<LinearBackward object at 0x[0-9a-f]+>", repr(fc3))
    assert fc3.name() == "lenet_ext::LinearBackward"
    relu = fc3.next_functions[0][0]
    assert re.fullmatch(r"<ReluBackward object at 0x[0-9a-f]+>", repr(relu))
    assert [type(node).__name__ for node, _ in fc3.next_functions] == [
        "ReluBackward", "AccumulateGrad", "AccumulateGrad"]


@pytest.mark.parametrize("model, expected", [
    ("LeNet", {"LinearBackward", "ReluBackward", "MaxPool2dBackward", "Conv2dBackward"}),
    ("FusedLeNet", {"LenetBackward"}),
])
def test_every_node_is_named(model, expected):
    nodes = graph_nodes(lenet_loss(model).grad_fn)
    for node in nodes:
        assert_named(node)
    assert ours(nodes) == expected


@pytest.mark.parametrize("model, expected", [
    ("LeNet", {"LinearBackward", "ReluBackward", "MaxPool2dBackward", "Conv2dBackward",
               "LinearBackwardBackward", "ReluBackwardBackward", "MaxPool2dBackwardBackward",
               "Conv2dBackwardBackward"}),
    # the fused ops' recorded backward runs the unfused ops (and conv2d_relu_max_pool2d)
    ("FusedLeNet", {"LenetBackward", "Conv2dReluMaxPool2dBackward", "LinearBackward",
                    "ReluBackward", "LinearBackwardBackward", "ReluBackwardBackward",
                    "MaxPool2dBackwardBackward", "Conv2dBackwardBackward"}),
])
def test_double_backward_nodes_are_named(model, expected):
    nodes = graph_nodes(lenet_loss(model, create_graph=True).grad_fn)
    for node in nodes:
        assert_named(node)
    assert ours(nodes) == expected


def test_gather_node_is_named():
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    _, indices = F.max_pool2d(x, 2, return_indices=True)
    node = torch.ops.lenet_ext.max_pool2d_gather(x, indices).grad_fn
    assert_named(node)
    assert type(node).__name__ == "MaxPool2dGatherBackward"


def test_profiler_shows_the_names():
    loss = lenet_loss("LeNet")
    with torch.profiler.profile() as profile:
        loss.backward()
    names = {event.name for event in profile.events()}
    for node in ("LinearBackward", "ReluBackward", "MaxPool2dBackward", "Conv2dBackward"):
        assert f"autograd::engine::evaluate_function: lenet_ext::{node}" in names


def test_hooks_and_metadata_work_on_named_nodes():
    # the types are built from torch's generic node type's methods and properties
    x = torch.randn(3, 4, requires_grad=True)
    y = F.relu(x)
    calls = []
    y.grad_fn.register_hook(lambda grad_inputs, grad_outputs: calls.append("post"))
    y.grad_fn.register_prehook(lambda grad_outputs: calls.append("pre"))
    y.grad_fn.metadata["tag"] = 1
    y.sum().backward()
    assert calls == ["pre", "post"] and y.grad_fn.metadata == {"tag": 1}
    torch.testing.assert_close(x.grad, (x > 0).float())


def test_node_objects_are_freed_and_types_not_instantiable():
    x = torch.randn(3, requires_grad=True)
    node_type = type(F.relu(x).grad_fn)
    before = sys.getrefcount(node_type)
    for _ in range(100):
        F.relu(x).grad_fn  # a Python object made and freed each time
    assert sys.getrefcount(node_type) == before
    with pytest.raises(TypeError, match="cannot create 'ReluBackward' instances"):
        node_type()
