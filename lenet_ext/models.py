"""Networks built from lenet_ext's modules and ops, each with a stock twin for comparison.

Each network is written once against a pair of sources, ``nn`` (module classes) and ``F`` (functions):
``LeNet`` and ``MLP`` take them from lenet_ext, ``StockLeNet`` and ``StockMLP`` from torch. The twins
have the same module tree and parameter names, so a ``state_dict`` moves freely between them.
"""
import torch

from . import functional, nn

_lenet = torch.ops.lenet_ext.lenet.default


class LeNet(torch.nn.Module):
    """The network of PyTorch's "Neural Networks" tutorial (LeNet-5 style) for 1x32x32 images:
    conv1 1->6 5x5, 2x2 max-pool, conv2 6->16 5x5, 2x2 max-pool, flatten, fc1 400->120, fc2 120->84,
    fc3 84->10, ReLU after every layer but the last. Returns logits (for CrossEntropyLoss).
    61,706 parameters in 10 tensors; ``print(net)`` shows the tutorial's module tree."""

    nn, F = nn, functional

    def __init__(self):
        super().__init__()
        self.conv1 = self.nn.Conv2d(1, 6, 5)
        self.conv2 = self.nn.Conv2d(6, 16, 5)
        self.fc1 = self.nn.Linear(16 * 5 * 5, 120)
        self.fc2 = self.nn.Linear(120, 84)
        self.fc3 = self.nn.Linear(84, 10)

    def forward(self, input):
        F = self.F
        x = F.max_pool2d(F.relu(self.conv1(input)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class FusedLeNet(LeNet):
    """LeNet computed by one op: on CPU the forward is ``torch.ops.lenet_ext.lenet`` (the whole
    network, saving what its backward needs) and the backward ``lenet_ext.lenet_backward``, which
    removes the per-op overhead of ~25 calls a training step. The module tree, parameter names,
    initialisation, ``repr`` (but for the class name) and ``state_dict`` are LeNet's, so checkpoints
    move between LeNet, FusedLeNet and StockLeNet. There are no fused CUDA kernels: on any other
    device the forward is LeNet's per-op one, with the same results; so it is under torch.func's
    transforms (grad, vjp, jacrev, vmap), which refuse the fused op's C++ autograd Function."""

    _LAYERS = ("conv1", "conv2", "fc1", "fc2", "fc3")

    def forward(self, input):
        if input.device.type != "cpu" or torch._C._are_functorch_transforms_active():
            return super().forward(input)
        # Through _modules and _parameters: nn.Module.__getattr__ on 15 names cost ~13 µs, half the
        # op's own time at batch 1.
        layers = [self._modules[name]._parameters for name in self._LAYERS]
        return _lenet(input, *(layer[kind] for layer in layers for kind in ("weight", "bias")))[0]


class MLP(torch.nn.Module):
    """The Fashion-MNIST recipe's classifier for 28x28 images: 784->256->128->10, ReLU and dropout
    (p=0.25) on both hidden layers. Returns log-probabilities (for NLLLoss)."""

    nn, F = nn, functional

    def __init__(self, dropout: float = 0.25):
        super().__init__()
        self.fc1 = self.nn.Linear(28 * 28, 256)
        self.fc2 = self.nn.Linear(256, 128)
        self.fc3 = self.nn.Linear(128, 10)
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, input):
        F = self.F
        x = torch.flatten(input, 1)
        x = self.dropout(F.relu(self.fc1(x)))
        x = self.dropout(F.relu(self.fc2(x)))
        return torch.log_softmax(self.fc3(x), dim=1)


class StockLeNet(LeNet):
    """LeNet computed by stock PyTorch: the reference for tests and ``--backend torch``."""

    nn, F = torch.nn, torch.nn.functional


class StockMLP(MLP):
    """MLP computed by stock PyTorch."""

    nn, F = torch.nn, torch.nn.functional


MODELS = {
    "lenet": {"ext": LeNet, "torch": StockLeNet},
    "mlp": {"ext": MLP, "torch": StockMLP},
}
