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

namespace lenet_ext {
namespace {

at::Tensor linear_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias) {
  check_linear_args(input, weight, bias);
  const int64_t in_features = weight.size(1), out_features = weight.size(0);
  const int64_t rows = linear_rows(input);
  auto output = at::empty(linear_output_shape(input, weight), input.options());
  const auto x = input.expect_contiguous();
  const auto w = weight.expect_contiguous();
  std::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::linear", [&] {
    std::vector<scalar_t> weight_t(in_features * out_features);
    transpose(w->const_data_ptr<scalar_t>(), weight_t.data(), out_features, in_features);
    gemm(x->const_data_ptr<scalar_t>(), weight_t.data(),
         b ? b->const_data_ptr<scalar_t>() : nullptr, output.mutable_data_ptr<scalar_t>(), rows,
         in_features, out_features);
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> output_mask) {
  check_linear_backward_args(grad_output, input, weight);
  const int64_t in_features = weight.size(1), out_features = weight.size(0);
  const int64_t rows = linear_rows(input);
  const auto grad = grad_output.expect_contiguous();
  const auto x = input.expect_contiguous();
  const auto w = weight.expect_contiguous();
  at::Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[0]) grad_input = at::empty(input.sizes(), input.options());
  if (output_mask[1]) grad_weight = at::empty(weight.sizes(), weight.options());
  if (output_mask[2]) grad_bias = at::empty({out_features}, weight.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::linear_backward", [&] {
    const scalar_t* g = grad->const_data_ptr<scalar_t>();
    if (grad_input.defined()) {
      gemm(g, w->const_data_ptr<scalar_t>(), static_cast<const scalar_t*>(nullptr),
           grad_input.mutable_data_ptr<scalar_t>(), rows, out_features, in_features);
    }
    if (grad_weight.defined()) {
      std::vector<scalar_t> grad_t(rows * out_features);
      transpose(g, grad_t.data(), rows, out_features);
      gemm(grad_t.data(), x->const_data_ptr<scalar_t>(), static_cast<const scalar_t*>(nullptr),
           grad_weight.mutable_data_ptr<scalar_t>(), out_features, rows, in_features);
    }
    if (grad_bias.defined()) {
      // rows in order, columns vectorised: the same sum whatever the thread count
      scalar_t* gb = grad_bias.mutable_data_ptr<scalar_t>();
      std::fill(gb, gb + out_features, scalar_t(0));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t n = 0; n < out_features; ++n) gb[n] += g[r * out_features + n];
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(lenet_ext, CPU, m) {
  m.impl("linear", &linear_cpu);
  m.impl("linear_backward", &linear_backward_cpu);
}

}  // namespace lenet_ext
