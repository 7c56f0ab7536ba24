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


class Conv2d(torch.nn.Conv2d):
    def _conv_forward(self, input, weight, bias):
        # torch.nn.Conv2d's own structure: a non-zero padding_mode pads first, then convolves
        # with padding 0
        if self.padding_mode != "zeros":
            input = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice,
                                            mode=self.padding_mode)
            return F.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
