// The schemas of every lenet_ext op, in one block, and the stub Python module that loads them.
// Kernels live in csrc/cpu/<op>.cpp and csrc/cuda/ (registered by csrc/cuda/registration.cpp);
// autograd in csrc/autograd.cpp; fake kernels are registered from Python (lenet_ext/ops.py).
#include <Python.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

extern "C" {
// `import lenet_ext._C` loads this shared library, which runs the registrations below. The module
// itself is empty: everything is reached through torch.ops.lenet_ext. Limited API, so one wheel
// serves every Python >= 3.9.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(lenet_ext, m) {
  m.def("relu(Tensor input) -> Tensor");
  m.def("relu_backward(Tensor grad_output, Tensor result) -> Tensor");

  m.def("linear(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
  // output_mask selects (grad_input, grad_weight, grad_bias); unselected outputs are undefined.
  m.def("linear_backward(Tensor grad_output, Tensor input, Tensor weight, bool[3] output_mask)"
        " -> (Tensor, Tensor, Tensor)");

  // Symmetric padding only: lenet_ext.functional pads the extra row/column of an even-kernel
  // 'same' convolution itself, as torch does.
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding,"
        " int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride,"
        " int[2] padding, int[2] dilation, int groups, bool[3] output_mask)"
        " -> (Tensor, Tensor, Tensor)");

  // Returns (output, indices); indices are flat offsets into each input plane, as torch's.
  m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding,"
        " int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  m.def("max_pool2d_backward(Tensor grad_output, Tensor indices, int[] input_size) -> Tensor");
}

// The backward ops have no derivative of their own (yet). Without an Autograd kernel, autograd
// would treat their outputs as constants under create_graph=True and a second backward would be
// silently wrong; this kernel records a node that raises "derivative ... not implemented" instead.
TORCH_LIBRARY_IMPL(lenet_ext, Autograd, m) {
  for (const char* op : {"relu_backward", "linear_backward", "conv2d_backward",
                         "max_pool2d_backward"}) {
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
  }
}
