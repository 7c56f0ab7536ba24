// The CPU entry points of every lenet_ext op, registered at the CPU key in one place, as
// csrc/cuda/registration.cpp registers the CUDA ones. Each entry point (in its op's file) checks
// the arguments (the shared csrc/<op>.h headers), makes inputs contiguous, allocates outputs and
// calls the op's kernels on raw pointers. An op without kernels of its own for bfloat16 and
// float16 is wrapped in Widened (widen.h), which runs such a call on float32 copies. The
// emulated-CUDA build registers the CUDA entry points at the CPU key instead, for the ops both
// devices have; the CPU-only ops (fused, internal) stay.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

#include "widen.h"

namespace lenet_ext::cpu {

using at::IntArrayRef;
using at::Tensor;
using Grads = std::tuple<Tensor, Tensor, Tensor>;
using T = const Tensor&;

Tensor relu_cpu(T input);
Tensor relu_backward_cpu(T grad_output, T result);
Tensor linear_cpu(T input, T weight, const std::optional<Tensor>& bias);
Grads linear_backward_cpu(T grad_output, T input, T weight, std::array<bool, 3> output_mask);
std::string linear_algorithm_cpu(T input, T weight, c10::string_view step);
Tensor linear_forced_cpu(T input, T weight, const std::optional<Tensor>& bias,
                         c10::string_view algorithm);
Grads linear_backward_forced_cpu(T grad_output, T input, T weight, std::array<bool, 3> output_mask,
                                 c10::string_view algorithm);
Tensor conv2d_cpu(T input, T weight, const std::optional<Tensor>& bias, IntArrayRef stride,
                  IntArrayRef padding, IntArrayRef dilation, int64_t groups);
Grads conv2d_backward_cpu(T grad_output, T input, T weight, IntArrayRef stride,
                          IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                          std::array<bool, 3> output_mask);
std::tuple<Tensor, Tensor> max_pool2d_cpu(T input, IntArrayRef kernel_size, IntArrayRef stride,
                                          IntArrayRef padding, IntArrayRef dilation,
                                          bool ceil_mode);
Tensor max_pool2d_backward_cpu(T grad_output, T indices, IntArrayRef input_size);
Tensor max_pool2d_gather_cpu(T input, T indices);
std::string max_pool2d_algorithm_cpu(T input, IntArrayRef kernel_size, IntArrayRef stride,
                                     IntArrayRef padding, IntArrayRef dilation, bool ceil_mode);
std::tuple<Tensor, Tensor> max_pool2d_forced_cpu(T input, IntArrayRef kernel_size,
                                                 IntArrayRef stride, IntArrayRef padding,
                                                 IntArrayRef dilation, bool ceil_mode,
                                                 c10::string_view algorithm);
std::tuple<Tensor, Tensor> conv2d_relu_max_pool2d_cpu(T input, T weight, T bias);
Grads conv2d_relu_max_pool2d_backward_cpu(T grad_output, T output, T indices, T input, T weight,
                                          std::array<bool, 3> output_mask);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lenet_cpu(
    T input, T conv1_weight, T conv1_bias, T conv2_weight, T conv2_bias, T fc1_weight, T fc1_bias,
    T fc2_weight, T fc2_bias, T fc3_weight, T fc3_bias);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
lenet_backward_cpu(T grad_logits, T input, T conv1_weight, T conv2_weight, T fc1_weight,
                   T fc2_weight, T fc3_weight, T pool1, T pool1_indices, T pool2, T pool2_indices,
                   T fc1_relu, T fc2_relu, std::array<bool, 11> output_mask);
std::tuple<Tensor, Tensor> conv2d_relu_max_pool2d_forced_cpu(T input, T weight, T bias,
                                                             c10::string_view algorithm);
Grads conv2d_relu_max_pool2d_backward_forced_cpu(T grad_output, T output, T indices, T input,
                                                 T weight, std::array<bool, 3> output_mask,
                                                 c10::string_view algorithm);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lenet_forced_cpu(
    T input, T conv1_weight, T conv1_bias, T conv2_weight, T conv2_bias, T fc1_weight, T fc1_bias,
    T fc2_weight, T fc2_bias, T fc3_weight, T fc3_bias, c10::string_view algorithm);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
lenet_backward_forced_cpu(T grad_logits, T input, T conv1_weight, T conv2_weight, T fc1_weight,
                          T fc2_weight, T fc3_weight, T pool1, T pool1_indices, T pool2,
                          T pool2_indices, T fc1_relu, T fc2_relu,
                          std::array<bool, 11> output_mask, c10::string_view algorithm);
std::string conv2d_algorithm_cpu(T input, T weight, IntArrayRef stride, IntArrayRef padding,
                                 IntArrayRef dilation, int64_t groups, c10::string_view step);
Tensor conv2d_forced_cpu(T input, T weight, const std::optional<Tensor>& bias, IntArrayRef stride,
                         IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                         c10::string_view algorithm);
Grads conv2d_backward_forced_cpu(T grad_output, T input, T weight, IntArrayRef stride,
                                 IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                                 std::array<bool, 3> output_mask, c10::string_view algorithm);

TORCH_LIBRARY_IMPL(lenet_ext, CPU, m) {
#if !defined(LENET_EXT_CUDA_EMULATED)
  m.impl("relu", &relu_cpu);
  m.impl("relu_backward", &relu_backward_cpu);
  m.impl("linear", &Widened<&linear_cpu>::call);
  m.impl("linear_backward", &Widened<&linear_backward_cpu>::call);
  m.impl("conv2d", &Widened<&conv2d_cpu>::call);
  m.impl("conv2d_backward", &Widened<&conv2d_backward_cpu>::call);
  m.impl("max_pool2d", &max_pool2d_cpu);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cpu);
  m.impl("max_pool2d_gather", &Widened<&max_pool2d_gather_cpu>::call);
#endif
  m.impl("conv2d_relu_max_pool2d", &Widened<&conv2d_relu_max_pool2d_cpu>::call);
  m.impl("conv2d_relu_max_pool2d_backward", &Widened<&conv2d_relu_max_pool2d_backward_cpu>::call);
  m.impl("lenet", &Widened<&lenet_cpu>::call);
  m.impl("lenet_backward", &Widened<&lenet_backward_cpu, at::kByte>::call);
  m.impl("_conv2d_relu_max_pool2d_forced", &Widened<&conv2d_relu_max_pool2d_forced_cpu>::call);
  m.impl("_conv2d_relu_max_pool2d_backward_forced", &Widened<&conv2d_relu_max_pool2d_backward_forced_cpu>::call);
  m.impl("_lenet_forced", &Widened<&lenet_forced_cpu>::call);
  m.impl("_lenet_backward_forced", &Widened<&lenet_backward_forced_cpu, at::kByte>::call);
  m.impl("_conv2d_algorithm", &Widened<&conv2d_algorithm_cpu>::call);
  m.impl("_conv2d_forced", &Widened<&conv2d_forced_cpu>::call);
  m.impl("_conv2d_backward_forced", &Widened<&conv2d_backward_forced_cpu>::call);
  m.impl("_linear_algorithm", &Widened<&linear_algorithm_cpu>::call);
  m.impl("_linear_forced", &Widened<&linear_forced_cpu>::call);
  m.impl("_linear_backward_forced", &Widened<&linear_backward_forced_cpu>::call);
  m.impl("_max_pool2d_algorithm", &Widened<&max_pool2d_algorithm_cpu>::call);
  m.impl("_max_pool2d_forced", &max_pool2d_forced_cpu);
}

}  // namespace lenet_ext::cpu
