"""Drop-in replacements for torch.nn modules, computed by lenet_ext's kernels.

Each subclasses its torch.nn namesake and replaces only the computation, so constructor arguments,
parameter names, initialisation, ``repr`` and ``state_dict`` are torch's own.
"""
import torch

from . import functional as F


class ReLU(torch.nn.ReLU):
    def forward(self, input):
        return F.relu(input, inplace=self.inplace)


class Linear(torch.nn.Linear):
    def forward(self, input):
        return F.linear(input, self.weight, self.bias)


class MaxPool2d(torch.nn.MaxPool2d):
    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)
