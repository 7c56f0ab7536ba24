// linear on CPU, three matrix products of gemm.h. The forward is gemm_nt, dot products of input
// rows with weight rows as stored, unless enough rows amortise transposing weight for gemm's
// broadcast tiles, which have no per-tile fold (gemm_nt_packed; a cycle estimate decides:
// forward_transposes). grad_input = grad_output * weight and grad_weight = grad_output^T * input
// are gemm reading grad_output as stored (row stride 1, k stride out_features for the transpose),
// so backward copies nothing; at 1-2 rows (batch 1) both are rows of axpys instead, as the tiles'
// setup outweighs so short a sum.
// grad_bias is a column sum. Only what output_mask asks is computed.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../backward.h"
#include "../linear.h"
#include "gemm.h"
#include "kernels.h"

namespace lenet_ext::cpu {

namespace {

// Estimated cycles per row of input (one FMA vector a cycle): gemm_nt's 4 x 4 tiles take
// ceil(in / kLanes) steps of 16 FMAs plus ~100 cycles to fold and store; gemm takes one FMA per
// kLanes output columns per in_feature, but needs weight^T first (~half a cycle per element).
bool forward_transposes(int64_t rows, int64_t in_features, int64_t out_features, int64_t lanes) {
  const auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  const int64_t dot_row = ceil_div(out_features, 4) * (4 * ceil_div(in_features, lanes) + 25);
  const int64_t gemm_row = ceil_div(out_features, lanes) * in_features;
  return out_features * in_features / 2 + rows * gemm_row < rows * dot_row;
}

constexpr int64_t kFewRows = 2;

// y[i] = a * x[i] (kAdd: +=) for i < n
template <bool kAdd, typename scalar_t>
inline void axpy(scalar_t a, const scalar_t* __restrict x, scalar_t* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = kAdd ? y[i] + a * x[i] : a * x[i];
}

}  // namespace

template <typename scalar_t>
void linear_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                    scalar_t* output, int64_t rows, int64_t in_features, int64_t out_features) {
  constexpr int64_t lanes = simd::Vec<scalar_t>::kLanes;
  if (in_features >= lanes && !forward_transposes(rows, in_features, out_features, lanes))
    gemm_nt(input, weight, bias, output, rows, in_features, out_features);
  else
    gemm_nt_packed(input, weight, bias, output, rows, in_features, out_features);
}

template <typename scalar_t>
void linear_backward(const scalar_t* grad_output, const scalar_t* input, const scalar_t* weight,
                     scalar_t* grad_input, scalar_t* grad_weight, scalar_t* grad_bias,
                     int64_t rows, int64_t in_features, int64_t out_features) {
  const scalar_t* no_bias = nullptr;
  if (rows <= kFewRows) {
    // A few rows (batch 1): each gradient row is a sum of a few weight or input rows scaled by
    // grad_output elements, a vectorised axpy per term, the first one writing. gemm's register
    // tiles would sum over k = rows for grad_weight, and their setup and stores cost ~6x the
    // product; a zeroing pass first would double the stores (fc1's grad_weight is 192 KB).
    if (grad_input)
      for (int64_t r = 0; r < rows; ++r) {
        scalar_t* out = grad_input + r * in_features;
        std::fill_n(out, in_features, scalar_t(0));
        for (int64_t o = 0; o < out_features; ++o)
          axpy<true>(grad_output[r * out_features + o], weight + o * in_features, out, in_features);
      }
    if (grad_weight && rows == 0) std::fill_n(grad_weight, out_features * in_features, scalar_t(0));
    for (int64_t o = 0; grad_weight && rows > 0 && o < out_features; ++o) {
      scalar_t* out = grad_weight + o * in_features;
      axpy<false>(grad_output[o], input, out, in_features);
      for (int64_t r = 1; r < rows; ++r)
        axpy<true>(grad_output[r * out_features + o], input + r * in_features, out, in_features);
    }
  } else {
    if (grad_input)  // [rows, in] = [rows, out] * [out, in]
      gemm(grad_output, out_features, 1, weight, in_features, no_bias, grad_input, in_features,
           rows, out_features, in_features);
    if (grad_weight)  // [out, in] = [rows, out]^T * [rows, in]
      gemm(grad_output, 1, out_features, input, in_features, no_bias, grad_weight, in_features,
           out_features, rows, in_features);
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
                   optional_data<scalar_t>(b), output.mutable_data_ptr<scalar_t>(),
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
  std::tie(grad_input, grad_weight, grad_bias) = empty_grads(input, weight, output_mask);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::linear_backward", [&] {
    linear_backward(grad->const_data_ptr<scalar_t>(), x->const_data_ptr<scalar_t>(),
                    w->const_data_ptr<scalar_t>(), data_or_null<scalar_t>(grad_input),
                    data_or_null<scalar_t>(grad_weight), data_or_null<scalar_t>(grad_bias),
                    linear_rows(input), weight.size(1), weight.size(0));
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace lenet_ext::cpu
