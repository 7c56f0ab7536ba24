// The schemas of every lenet_ext op, in one block, and the stub Python module that loads them.
// Kernels live in csrc/cpu/<op>.cpp or csrc/cpu/<op>/ and csrc/cuda/ (registered by
// csrc/cpu/registration.cpp and csrc/cuda/registration.cpp; csrc/README.md is the map);
// autograd in csrc/autograd.cpp; fake kernels are registered from Python (lenet_ext/ops.py).
#include <Python.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

namespace lenet_ext {
int name_autograd_nodes();  // node_names.cpp
}

extern "C" {
// `import lenet_ext._C` loads this shared library, which runs the registrations below, and gives
// the autograd nodes their Python types. The module holds one constant, CUDA_EMULATED; everything
// else is reached through torch.ops.lenet_ext. Limited API, so one wheel serves every Python >= 3.9.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
#if defined(LENET_EXT_CUDA_EMULATED)
  constexpr long cuda_emulated = 1;  // the CPU key runs the CUDA kernels (setup.py)
#else
  constexpr long cuda_emulated = 0;
#endif
  if (lenet_ext::name_autograd_nodes() != 0) return nullptr;
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr && PyModule_AddIntConstant(module, "CUDA_EMULATED", cuda_emulated) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

TORCH_LIBRARY(lenet_ext, m) {
  m.def("relu(Tensor input) -> Tensor");
  m.def("relu_backward(Tensor grad_output, Tensor result) -> Tensor");

  m.def("linear(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
  // output_mask selects (grad_input, grad_weight, grad_bias); unselected outputs are undefined.
  m.def("linear_backward(Tensor grad_output, Tensor input, Tensor weight, bool[3] output_mask)"
        " -> (Tensor, Tensor, Tensor)");
  // Internal (tests): the algorithm csrc/cpu/linear/select.cpp picks for a step ("forward",
  // "grad_input", "grad_weight"), and linear with one algorithm forced ("reference", "dot",
  // "gemm" forward; "reference", "axpy", "gemm" backward; a shape it does not claim raises).
  m.def("_linear_algorithm(Tensor input, Tensor weight, str step) -> str");
  m.def("_linear_forced(Tensor input, Tensor weight, Tensor? bias, str algorithm) -> Tensor");
  m.def("_linear_backward_forced(Tensor grad_output, Tensor input, Tensor weight,"
        " bool[3] output_mask, str algorithm) -> (Tensor, Tensor, Tensor)");

  // Symmetric padding only: lenet_ext.functional pads the extra row/column of an even-kernel
  // 'same' convolution itself, as torch does.
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding,"
        " int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride,"
        " int[2] padding, int[2] dilation, int groups, bool[3] output_mask)"
        " -> (Tensor, Tensor, Tensor)");

  // Internal (tests): the algorithm csrc/cpu/conv2d/select.cpp picks for a step ("forward",
  // "grad_input", "grad_weight"), and conv2d with one algorithm forced ("reference", "im2col",
  // "direct", "rows", "lanes"; a shape it does not claim raises). CPU only.
  m.def("_conv2d_algorithm(Tensor input, Tensor weight, int[2] stride, int[2] padding,"
        " int[2] dilation, int groups, str step) -> str");
  m.def("_conv2d_forced(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding,"
        " int[2] dilation, int groups, str algorithm) -> Tensor");
  m.def("_conv2d_backward_forced(Tensor grad_output, Tensor input, Tensor weight, int[2] stride,"
        " int[2] padding, int[2] dilation, int groups, bool[3] output_mask, str algorithm)"
        " -> (Tensor, Tensor, Tensor)");

  // Returns (output, indices); indices are flat offsets into each input plane, as torch's.
  m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding,"
        " int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  m.def("max_pool2d_backward(Tensor grad_output, Tensor indices, int[] input_size) -> Tensor");
  // The backward's derivative (and adjoint): each plane of input read at indices, whose shape the
  // output takes.
  m.def("max_pool2d_gather(Tensor input, Tensor indices) -> Tensor");
  // Internal (tests): the algorithm csrc/cpu/max_pool2d/select.cpp picks, and max_pool2d with one
  // forced ("reference", "general", "2x2"; a shape it does not claim raises). CPU only.
  m.def("_max_pool2d_algorithm(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding,"
        " int[2] dilation, bool ceil_mode) -> str");
  m.def("_max_pool2d_forced(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding,"
        " int[2] dilation, bool ceil_mode, str algorithm) -> (Tensor, Tensor)");

  // Fused ops (CPU only). LeNet's feature block: valid stride-1 conv2d + bias, ReLU, 2x2 stride-2
  // max-pool; output and indices are max_pool2d(relu(conv2d(input, weight, bias)), 2)'s.
  m.def("conv2d_relu_max_pool2d(Tensor input, Tensor weight, Tensor bias)"
        " -> (Tensor output, Tensor indices)");
  m.def("conv2d_relu_max_pool2d_backward(Tensor grad_output, Tensor output, Tensor indices,"
        " Tensor input, Tensor weight, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // The tutorial's whole LeNet on (N, 1, 32, 32) input: the logits, then what the backward needs
  // (the pools' argmax as uint8 window codes dy * 2 + dx, not max_pool2d's int64 offsets).
  m.def("lenet(Tensor input, Tensor conv1_weight, Tensor conv1_bias, Tensor conv2_weight,"
        " Tensor conv2_bias, Tensor fc1_weight, Tensor fc1_bias, Tensor fc2_weight,"
        " Tensor fc2_bias, Tensor fc3_weight, Tensor fc3_bias) -> (Tensor logits, Tensor pool1,"
        " Tensor pool1_indices, Tensor pool2, Tensor pool2_indices, Tensor fc1_relu,"
        " Tensor fc2_relu)");
  // output_mask selects the gradients of (input, conv1_weight, conv1_bias, ..., fc3_bias).
  m.def("lenet_backward(Tensor grad_logits, Tensor input, Tensor conv1_weight,"
        " Tensor conv2_weight, Tensor fc1_weight, Tensor fc2_weight, Tensor fc3_weight,"
        " Tensor pool1, Tensor pool1_indices, Tensor pool2, Tensor pool2_indices,"
        " Tensor fc1_relu, Tensor fc2_relu, bool[11] output_mask) -> (Tensor, Tensor, Tensor,"
        " Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Internal (tests): the fused ops with their algorithm forced ("reference": each op's reference
  // kernels chained; "fused": what the ops run). Same arguments and results, then the name.
  m.def("_conv2d_relu_max_pool2d_forced(Tensor input, Tensor weight, Tensor bias, str algorithm)"
        " -> (Tensor output, Tensor indices)");
  m.def("_conv2d_relu_max_pool2d_backward_forced(Tensor grad_output, Tensor output,"
        " Tensor indices, Tensor input, Tensor weight, bool[3] output_mask, str algorithm)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("_lenet_forced(Tensor input, Tensor conv1_weight, Tensor conv1_bias, Tensor conv2_weight,"
        " Tensor conv2_bias, Tensor fc1_weight, Tensor fc1_bias, Tensor fc2_weight,"
        " Tensor fc2_bias, Tensor fc3_weight, Tensor fc3_bias, str algorithm) -> (Tensor logits,"
        " Tensor pool1, Tensor pool1_indices, Tensor pool2, Tensor pool2_indices,"
        " Tensor fc1_relu, Tensor fc2_relu)");
  m.def("_lenet_backward_forced(Tensor grad_logits, Tensor input, Tensor conv1_weight,"
        " Tensor conv2_weight, Tensor fc1_weight, Tensor fc2_weight, Tensor fc3_weight,"
        " Tensor pool1, Tensor pool1_indices, Tensor pool2, Tensor pool2_indices,"
        " Tensor fc1_relu, Tensor fc2_relu, bool[11] output_mask, str algorithm) -> (Tensor,"
        " Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

// The fused backward ops have no derivative of their own: a recorded backward of the fused ops
// (create_graph=True) runs the unfused ops instead (csrc/autograd.cpp), so these are reached with
// grad only when called directly. Without an Autograd kernel, autograd would treat their outputs
// as constants and a second backward would be silently wrong; this kernel records a node that
// raises "derivative ... not implemented" instead.
TORCH_LIBRARY_IMPL(lenet_ext, Autograd, m) {
  for (const char* op : {"conv2d_relu_max_pool2d_backward", "lenet_backward"}) {
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
  }
}
