// conv2d_relu_max_pool2d on CPU: LeNet's feature block as one op, its entry points (checks,
// allocation, raw pointers) and the internal ops that force an algorithm (algorithms.h). The
// convolution (+ bias) is conv2d's own kernel (kernels.h); ReLU and the 2x2 pool are then one
// pass over the conv output (relu_max_pool2x2.cpp). Backward: that pass's backward, then conv2d's.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <array>
#include <memory>
#include <optional>
#include <string_view>
#include <tuple>

#include "../../backward.h"
#include "../../conv2d_relu_max_pool2d.h"
#include "algorithms.h"

namespace lenet_ext::cpu {
namespace fused {

// `fused` unless a test forces one by name (the _forced ops); unknown names are refused.
Algorithm chosen_algorithm(const char* op, std::optional<std::string_view> algorithm) {
  if (!algorithm) return Algorithm::kFused;
  const auto named = algorithm_named(*algorithm);
  TORCH_CHECK(named.has_value(), "lenet_ext.", op, ": expected algorithm to be one of reference, "
              "fused, but got '", *algorithm, "'");
  return *named;
}

namespace {

std::tuple<at::Tensor, at::Tensor> block_run(const at::Tensor& input, const at::Tensor& weight,
                                             const at::Tensor& bias,
                                             std::optional<std::string_view> algorithm) {
  const char* op = algorithm ? "_conv2d_relu_max_pool2d_forced" : "conv2d_relu_max_pool2d";
  const Algorithm chosen = chosen_algorithm(op, algorithm);
  const BlockShape s = check_conv2d_relu_max_pool2d_args(input, weight, op);
  check_same_dtype_device(op, "bias", bias, "input", input);
  check_same_shape(op, "bias", bias, {weight.size(0)});
  const int64_t batch = input.size(0);
  auto output = at::empty(s.output_sizes(batch), input.options());
  auto indices = at::empty(s.output_sizes(batch), input.options().dtype(at::kLong));
  const auto [x, w, b] = contiguous(input, weight, bias);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::conv2d_relu_max_pool2d", [&] {
    const auto k = kernels<scalar_t, int64_t>(chosen);
    // not zeroed: the conv kernel writes every element
    const std::unique_ptr<scalar_t[]> conv(new scalar_t[batch * s.conv.output_block()]);
    k.conv2d_forward(x->const_data_ptr<scalar_t>(), w->const_data_ptr<scalar_t>(),
                   b->const_data_ptr<scalar_t>(), conv.get(), batch, 1, s.conv);
    k.relu_max_pool2x2(conv.get(), output.mutable_data_ptr<scalar_t>(),
                     indices.mutable_data_ptr<int64_t>(), batch * s.conv.out_channels,
                     s.conv.out_h, s.conv.out_w);
  });
  return {output, indices};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_backward_run(
    const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& indices,
    const at::Tensor& input, const at::Tensor& weight, std::array<bool, 3> output_mask,
    std::optional<std::string_view> algorithm) {
  const char* op = algorithm ? "_conv2d_relu_max_pool2d_backward_forced"
                             : "conv2d_relu_max_pool2d_backward";
  const Algorithm chosen = chosen_algorithm(op, algorithm);
  const BlockShape s = check_conv2d_relu_max_pool2d_args(input, weight, op);
  const int64_t batch = input.size(0);
  const auto output_sizes = s.output_sizes(batch);
  check_same_dtype_device(op, "grad_output", grad_output, "input", input);
  check_same_shape(op, "grad_output", grad_output, output_sizes);
  check_same_dtype_device(op, "output", output, "input", input);
  check_same_shape(op, "output", output, output_sizes);
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong, "lenet_ext.", op,
                   ": expected indices to have dtype int64, but got ", indices.scalar_type());
  TORCH_CHECK(indices.device() == input.device(), "lenet_ext.", op, ": expected indices to be on "
              "the same device as input (", input.device(), "), but got ", indices.device());
  check_same_shape(op, "indices", indices, output_sizes);

  const auto [grad, y, idx, x, w] = contiguous(grad_output, output, indices, input, weight);
  auto [grad_input, grad_weight, grad_bias] = empty_grads(input, weight, output_mask);
  int64_t bad_index = 0;
  bool indices_ok = true;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::conv2d_relu_max_pool2d_backward", [&] {
    const auto k = kernels<scalar_t, int64_t>(chosen);
    // not zeroed: the scatter zeroes each plane it writes
    const std::unique_ptr<scalar_t[]> grad_conv(new scalar_t[batch * s.conv.output_block()]);
    indices_ok = k.relu_max_pool2x2_backward(
        grad->const_data_ptr<scalar_t>(), y->const_data_ptr<scalar_t>(),
        idx->const_data_ptr<int64_t>(), grad_conv.get(), batch * s.conv.out_channels,
        s.conv.out_h, s.conv.out_w, &bad_index);
    if (!indices_ok) return;
    k.conv2d_backward(grad_conv.get(), x->const_data_ptr<scalar_t>(),
                    w->const_data_ptr<scalar_t>(), data_or_null<scalar_t>(grad_input),
                    data_or_null<scalar_t>(grad_weight), data_or_null<scalar_t>(grad_bias),
                    batch, 1, s.conv);
  });
  TORCH_CHECK(indices_ok, "lenet_ext.", op, ": expected indices in [0, conv_h * conv_w) = [0, ",
              s.conv.positions(), "), but got ", bad_index);
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace
}  // namespace fused

using T = const at::Tensor&;

std::tuple<at::Tensor, at::Tensor> conv2d_relu_max_pool2d_cpu(T input, T weight, T bias) {
  return fused::block_run(input, weight, bias, std::nullopt);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_relu_max_pool2d_backward_cpu(
    T grad_output, T output, T indices, T input, T weight, std::array<bool, 3> output_mask) {
  return fused::block_backward_run(grad_output, output, indices, input, weight, output_mask,
                                   std::nullopt);
}

std::tuple<at::Tensor, at::Tensor> conv2d_relu_max_pool2d_forced_cpu(T input, T weight, T bias,
                                                                     c10::string_view algorithm) {
  return fused::block_run(input, weight, bias, std::string_view(algorithm.data(), algorithm.size()));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_relu_max_pool2d_backward_forced_cpu(
    T grad_output, T output, T indices, T input, T weight, std::array<bool, 3> output_mask,
    c10::string_view algorithm) {
  return fused::block_backward_run(grad_output, output, indices, input, weight, output_mask,
                                   std::string_view(algorithm.data(), algorithm.size()));
}

}  // namespace lenet_ext::cpu
