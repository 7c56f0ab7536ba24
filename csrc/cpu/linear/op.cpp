// linear on CPU: the op's entry points (checks, allocation, then raw pointers), the run of the
// algorithm select.cpp picks for each pass (or the one a test forces), grad_bias, and the internal
// ops tests use to see and force the choice. The algorithms are one a file in this folder.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <optional>
#include <string>
#include <tuple>

#include "../../backward.h"
#include "../../linear.h"
#include "../kernels.h"
#include "algorithms.h"

namespace lenet_ext::cpu {
namespace linear {

template <typename scalar_t>
void forward(Algorithm algorithm, const scalar_t* input, const scalar_t* weight,
             const scalar_t* bias, scalar_t* output, const LinearShape& s) {
  switch (algorithm) {
    case Algorithm::kReference: return reference_forward(input, weight, bias, output, s);
    case Algorithm::kDot: return dot_forward(input, weight, bias, output, s);
    default: return gemm_forward(input, weight, bias, output, s);
  }
}

template <typename scalar_t>
void backward(Algorithm grad_input_algorithm, Algorithm grad_weight_algorithm,
              const scalar_t* grad_output, const scalar_t* input, const scalar_t* weight,
              scalar_t* grad_input, scalar_t* grad_weight, scalar_t* grad_bias,
              const LinearShape& s) {
  const scalar_t* none = nullptr;
  scalar_t* unwanted = nullptr;
  if (grad_input && grad_input_algorithm == Algorithm::kReference)
    reference_backward(grad_output, none, weight, grad_input, unwanted, unwanted, s);
  else if (grad_input && grad_input_algorithm == Algorithm::kAxpy)
    axpy_grad_input(grad_output, weight, grad_input, s);
  else if (grad_input)
    gemm_grad_input(grad_output, weight, grad_input, s);
  if (grad_weight && grad_weight_algorithm == Algorithm::kReference)
    reference_backward(grad_output, input, none, unwanted, grad_weight, unwanted, s);
  else if (grad_weight && grad_weight_algorithm == Algorithm::kAxpy)
    axpy_grad_weight(grad_output, input, grad_weight, s);
  else if (grad_weight)
    gemm_grad_weight(grad_output, input, grad_weight, s);
  if (grad_bias && grad_input_algorithm == Algorithm::kReference) {
    reference_backward(grad_output, none, none, unwanted, unwanted, grad_bias, s);
  } else if (grad_bias) {
    // a column sum, rows in order, columns vectorised: the same sum whatever the thread count
    std::fill(grad_bias, grad_bias + s.out_features, scalar_t(0));
    for (int64_t r = 0; r < s.rows; ++r)
      for (int64_t n = 0; n < s.out_features; ++n) grad_bias[n] += grad_output[r * s.out_features + n];
  }
}

}  // namespace linear

// kernels.h's entry for the op and the fused ops: select.cpp's choice for each pass.
template <typename scalar_t>
void linear_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                    scalar_t* output, int64_t rows, int64_t in_features, int64_t out_features) {
  const linear::LinearShape s{rows, in_features, out_features};
  linear::forward(linear::select<scalar_t>(linear::Pass::kForward, s), input, weight, bias,
                  output, s);
}

template <typename scalar_t>
void linear_backward(const scalar_t* grad_output, const scalar_t* input, const scalar_t* weight,
                     scalar_t* grad_input, scalar_t* grad_weight, scalar_t* grad_bias,
                     int64_t rows, int64_t in_features, int64_t out_features) {
  using namespace linear;
  const LinearShape s{rows, in_features, out_features};
  backward(select<scalar_t>(Pass::kGradInput, s), select<scalar_t>(Pass::kGradWeight, s),
           grad_output, input, weight, grad_input, grad_weight, grad_bias, s);
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

linear::LinearShape linear_shape(const at::Tensor& input, const at::Tensor& weight) {
  return {linear_rows(input), weight.size(1), weight.size(0)};
}

// An algorithm forced by name (tests): unknown names and shapes it does not claim are refused.
template <typename scalar_t>
linear::Algorithm forced(const char* op, std::string_view algorithm, linear::Pass pass,
                         const linear::LinearShape& s) {
  const auto chosen = linear::algorithm_named(algorithm);
  TORCH_CHECK(chosen.has_value(), "lenet_ext.", op, ": expected algorithm to be one of reference, "
              "dot, axpy, gemm, but got '", algorithm, "'");
  TORCH_CHECK(linear::claims<scalar_t>(*chosen, pass, s), "lenet_ext.", op, ": algorithm '",
              algorithm, "' does not claim the ", linear::name(pass), " of this shape (", s.rows,
              " rows, ", s.in_features, " -> ", s.out_features, " features, ",
              sizeof(scalar_t) == 4 ? "float32" : "float64", ")");
  return *chosen;
}

// The op's entry points; `algorithm` set (the _forced ops) runs that algorithm for every pass.
at::Tensor linear_run(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias,
                      std::optional<std::string_view> algorithm) {
  check_linear_args(input, weight, bias);
  auto output = at::empty(linear_output_shape(input, weight), input.options());
  const linear::LinearShape s = linear_shape(input, weight);
  const auto [x, w] = contiguous(input, weight);
  const auto b = contiguous_bias(bias);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::linear", [&] {
    using linear::Pass;
    const auto chosen = algorithm ? forced<scalar_t>("_linear_forced", *algorithm, Pass::kForward, s)
                                  : linear::select<scalar_t>(Pass::kForward, s);
    linear::forward(chosen, x->const_data_ptr<scalar_t>(), w->const_data_ptr<scalar_t>(),
                    optional_data<scalar_t>(b), output.mutable_data_ptr<scalar_t>(), s);
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_run(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> output_mask, std::optional<std::string_view> algorithm) {
  check_linear_backward_args(grad_output, input, weight);
  const linear::LinearShape s = linear_shape(input, weight);
  const auto [grad, x, w] = contiguous(grad_output, input, weight);
  auto [grad_input, grad_weight, grad_bias] = empty_grads(input, weight, output_mask);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::linear_backward", [&] {
    using linear::Pass;
    auto input_algorithm = linear::select<scalar_t>(Pass::kGradInput, s);
    auto weight_algorithm = linear::select<scalar_t>(Pass::kGradWeight, s);
    if (algorithm) {
      const char* op = "_linear_backward_forced";
      if (output_mask[0]) forced<scalar_t>(op, *algorithm, Pass::kGradInput, s);
      if (output_mask[1]) forced<scalar_t>(op, *algorithm, Pass::kGradWeight, s);
      const auto chosen = linear::algorithm_named(*algorithm);
      if (!chosen) forced<scalar_t>(op, *algorithm, Pass::kForward, s);  // the name
      input_algorithm = weight_algorithm = *chosen;
    }
    linear::backward(input_algorithm, weight_algorithm, grad->const_data_ptr<scalar_t>(),
                     x->const_data_ptr<scalar_t>(), w->const_data_ptr<scalar_t>(),
                     data_or_null<scalar_t>(grad_input), data_or_null<scalar_t>(grad_weight),
                     data_or_null<scalar_t>(grad_bias), s);
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

at::Tensor linear_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias) {
  return linear_run(input, weight, bias, std::nullopt);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> output_mask) {
  return linear_backward_run(grad_output, input, weight, output_mask, std::nullopt);
}

at::Tensor linear_forced_cpu(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, c10::string_view algorithm) {
  return linear_run(input, weight, bias, std::string_view(algorithm.data(), algorithm.size()));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_forced_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> output_mask, c10::string_view algorithm) {
  return linear_backward_run(grad_output, input, weight, output_mask,
                             std::string_view(algorithm.data(), algorithm.size()));
}

// The algorithm select.cpp picks for one pass ("forward", "grad_input", "grad_weight") of a call.
std::string linear_algorithm_cpu(const at::Tensor& input, const at::Tensor& weight,
                                 c10::string_view pass) {
  check_linear_args(input, weight, std::nullopt, "_linear_algorithm");
  const auto chosen_pass = linear::pass_named(std::string_view(pass.data(), pass.size()));
  TORCH_CHECK(chosen_pass.has_value(), "lenet_ext._linear_algorithm: expected step to be one of "
              "forward, grad_input, grad_weight, but got '", pass, "'");
  std::string algorithm;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::_linear_algorithm", [&] {
    algorithm = linear::name(linear::select<scalar_t>(*chosen_pass, linear_shape(input, weight)));
  });
  return algorithm;
}

}  // namespace lenet_ext::cpu
