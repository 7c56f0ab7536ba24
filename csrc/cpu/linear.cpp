// linear on CPU: out = input * weight^T + bias as one GEMM (gemm.h) over input flattened to
// [rows, in_features]. Forward transposes weight once (out*in elements) so the GEMM streams
// contiguous rows; backward is two more GEMMs (grad_input = grad_out * W, grad_weight =
// grad_out^T * input) and a column sum for grad_bias, each computed only when output_mask asks.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../linear.h"
#include "gemm.h"
#include "kernels.h"

namespace lenet_ext {
namespace cpu {

template <typename scalar_t>
void linear_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                    scalar_t* output, int64_t rows, int64_t in_features, int64_t out_features) {
  std::vector<scalar_t> weight_t(in_features * out_features);
  transpose(weight, weight_t.data(), out_features, in_features);
  gemm(input, weight_t.data(), bias, output, rows, in_features, out_features);
}

template <typename scalar_t>
void linear_backward(const scalar_t* grad_output, const scalar_t* input, const scalar_t* weight,
                     scalar_t* grad_input, scalar_t* grad_weight, scalar_t* grad_bias,
                     int64_t rows, int64_t in_features, int64_t out_features) {
  if (grad_input) {
    gemm(grad_output, weight, static_cast<const scalar_t*>(nullptr), grad_input, rows,
         out_features, in_features);
  }
  if (grad_weight) {
    std::vector<scalar_t> grad_t(rows * out_features);
    transpose(grad_output, grad_t.data(), rows, out_features);
    gemm(grad_t.data(), input, static_cast<const scalar_t*>(nullptr), grad_weight, out_features,
         rows, in_features);
  }
  if (grad_bias) {
    // rows in order, columns vectorised: the same sum whatever the thread count
    std::fill(grad_bias, grad_bias + out_features, scalar_t(0));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t n = 0; n < out_features; ++n) grad_bias[n] += grad_output[r * out_features + n];
  }
}

#define LENET_EXT_INSTANTIATE(scalar_t)                                                       \
  template void linear_forward(const scalar_t*, const scalar_t*, const scalar_t*, scalar_t*,     \
                               int64_t, int64_t, int64_t);                                      \
  template void linear_backward(const scalar_t*, const scalar_t*, const scalar_t*, scalar_t*,    \
                                scalar_t*, scalar_t*, int64_t, int64_t, int64_t);
LENET_EXT_INSTANTIATE(float)
LENET_EXT_INSTANTIATE(double)
#undef LENET_EXT_INSTANTIATE

namespace {

at::Tensor linear_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias) {
  check_linear_args(input, weight, bias);
  auto output = at::empty(linear_output_shape(input, weight), input.options());
  const auto x = input.expect_contiguous();
  const auto w = weight.expect_contiguous();
  std::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::linear", [&] {
    linear_forward(x->const_data_ptr<scalar_t>(), w->const_data_ptr<scalar_t>(),
                   b ? b->const_data_ptr<scalar_t>() : nullptr, output.mutable_data_ptr<scalar_t>(),
                   linear_rows(input), weight.size(1), weight.size(0));
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> output_mask) {
  check_linear_backward_args(grad_output, input, weight);
  const auto grad = grad_output.expect_contiguous();
  const auto x = input.expect_contiguous();
  const auto w = weight.expect_contiguous();
  at::Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[0]) grad_input = at::empty(input.sizes(), input.options());
  if (output_mask[1]) grad_weight = at::empty(weight.sizes(), weight.options());
  if (output_mask[2]) grad_bias = at::empty({weight.size(0)}, weight.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::linear_backward", [&] {
    const auto out_ptr = [](at::Tensor& t) {
      return t.defined() ? t.mutable_data_ptr<scalar_t>() : nullptr;
    };
    linear_backward(grad->const_data_ptr<scalar_t>(), x->const_data_ptr<scalar_t>(),
                    w->const_data_ptr<scalar_t>(), out_ptr(grad_input), out_ptr(grad_weight),
                    out_ptr(grad_bias), linear_rows(input), weight.size(1), weight.size(0));
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(lenet_ext, CPU, m) {
  m.impl("linear", &linear_cpu);
  m.impl("linear_backward", &linear_backward_cpu);
}

}  // namespace cpu
}  // namespace lenet_ext
