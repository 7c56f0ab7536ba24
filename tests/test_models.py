"""lenet_ext.models: the tutorial's LeNet and the Fashion-MNIST MLP on our kernels, against their
stock twins (same module tree, torch.nn modules and torch.nn.functional)."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import lenet_ext
from lenet_ext.models import MLP, LeNet, StockLeNet, StockMLP
from helpers import GRAD_TOL, OUTPUT_TOL

# What `print(net)` shows in PyTorch's "Neural Networks" tutorial, below its first line `Net(`.
TUTORIAL_TREE = """\
  (conv1): Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1))
  (conv2): Conv2d(6, 16, kernel_size=(5, 5), stride=(1, 1))
  (fc1): Linear(in_features=400, out_features=120, bias=True)
  (fc2): Linear(in_features=120, out_features=84, bias=True)
  (fc3): Linear(in_features=84, out_features=10, bias=True)
)"""

PAIRS = {"lenet": (LeNet, StockLeNet, (1, 32, 32)), "mlp": (MLP, StockMLP, (1, 28, 28))}



def twins(name, device):
    """(ours, stock) with the same weights."""
    ours_cls, stock_cls, _ = PAIRS[name]
    ours = ours_cls().to(device)
    stock = stock_cls().to(device)
    stock.load_state_dict(ours.state_dict())
    return ours, stock


def images(name, batch, device):
    return torch.randn(batch, *PAIRS[name][2], device=device)


# The aten ops that do the stock networks' arithmetic (as seen below autograd).
STOCK_KERNELS = {f"aten::{op}" for op in (
    "convolution", "convolution_backward", "max_pool2d_with_indices",
    "max_pool2d_with_indices_backward", "addmm", "mm", "relu", "threshold_backward")}


class OpRecorder(TorchDispatchMode):
    """Records the name of every op that reaches a kernel."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._schema.name)
        return func(*args, **(kwargs or {}))


def recorded_ops(model_cls, name):
    """The ops one forward and backward pass of a fresh ``model_cls`` runs."""
    model = model_cls()
    with OpRecorder() as recorder:
        model(images(name, 4, "cpu")).sum().backward()
    return recorder.ops


def test_lenet_prints_the_tutorial_module_tree():
    assert repr(LeNet()) == "LeNet(\n" + TUTORIAL_TREE
    assert repr(StockLeNet()) == "StockLeNet(\n" + TUTORIAL_TREE


def test_lenet_has_the_tutorial_parameters():
    parameters = list(LeNet().parameters())
    assert len(parameters) == 10
    assert sum(p.numel() for p in parameters) == 61_706


def test_lenet_is_built_from_lenet_ext_modules():
    kinds = {name: type(module) for name, module in LeNet().named_children()}
    assert kinds == {"conv1": lenet_ext.nn.Conv2d, "conv2": lenet_ext.nn.Conv2d,
                     "fc1": lenet_ext.nn.Linear, "fc2": lenet_ext.nn.Linear, "fc3": lenet_ext.nn.Linear}


@pytest.mark.parametrize("name, our_ops", [
    ("lenet", {"conv2d", "max_pool2d", "relu", "linear"}),
    ("mlp", {"relu", "linear"}),
])
def test_forward_and_backward_compute_with_lenet_ext_ops(name, our_ops):
    ours, stock = (recorded_ops(cls, name) for cls in PAIRS[name][:2])
    assert {f"lenet_ext::{op}{suffix}" for op in our_ops for suffix in ("", "_backward")} <= ours
    assert not ours & STOCK_KERNELS
    assert stock & STOCK_KERNELS  # the recorder does see stock's kernels


@pytest.mark.parametrize("name", PAIRS)
def test_state_dict_moves_between_ours_and_stock(name):
    ours_cls, stock_cls, _ = PAIRS[name]
    ours, stock = ours_cls(), stock_cls()
    stock.load_state_dict(ours.state_dict())
    back = ours_cls()
    back.load_state_dict(stock.state_dict())
    for key, value in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_mlp_is_the_fashion_mnist_recipe():
    model = MLP()
    shapes = [tuple(model.get_submodule(fc).weight.shape) for fc in ("fc1", "fc2", "fc3")]
    assert shapes == [(256, 784), (128, 256), (10, 128)]
    assert all(isinstance(model.get_submodule(fc), lenet_ext.nn.Linear) for fc in ("fc1", "fc2", "fc3"))
    assert model.dropout.p == 0.25
    log_probs = model.eval()(images("mlp", 5, "cpu"))
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(5))


def test_mlp_drops_hidden_units_in_training_only():
    model = MLP()
    x = images("mlp", 8, "cpu")
    assert not torch.equal(model.train()(x), model(x))
    assert torch.equal(model.eval()(x), model(x))


@pytest.mark.parametrize("name", PAIRS)
def test_outputs_loss_and_gradients_match_stock(name, device):
    ours, stock = twins(name, device)
    x = images(name, 16, device)
    target = torch.randint(0, 10, (16,), device=device)
    loss_fn = F.cross_entropy if name == "lenet" else F.nll_loss
    outputs, losses = [], []
    for model in (ours, stock):
        torch.manual_seed(1)  # the same dropout masks in the MLP
        outputs.append(model(x))
        losses.append(loss_fn(outputs[-1], target))
        losses[-1].backward()
    torch.testing.assert_close(outputs[0], outputs[1], **OUTPUT_TOL)
    torch.testing.assert_close(losses[0], losses[1], **OUTPUT_TOL)
    for (key, ours_param), stock_param in zip(ours.named_parameters(), stock.parameters()):
        torch.testing.assert_close(ours_param.grad, stock_param.grad, **GRAD_TOL, msg=key)


def test_lenet_sgd_losses_match_stock_for_10_steps(device):
    ours, stock = twins("lenet", device)
    x = images("lenet", 64, device)
    target = torch.randint(0, 10, (64,), device=device)
    losses = []
    for model in (ours, stock):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        losses.append([])
        for _ in range(10):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), target)
            loss.backward()
            optimizer.step()
            losses[-1].append(loss.item())
    assert losses[0][-1] < losses[0][0]  # the steps do change the weights
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_lenet_matches_eager(device):
    torch._dynamo.reset()
    eager = LeNet().to(device)
    twin = LeNet().to(device)
    twin.load_state_dict(eager.state_dict())
    compiled = torch.compile(twin, fullgraph=True)
    x = images("lenet", 8, device)
    results = []
    for model in (eager, compiled):
        output = model(x)
        output.square().sum().backward()
        results.append([output] + [p.grad for p in model.parameters()])
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, **GRAD_TOL)
