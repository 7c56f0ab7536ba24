// lenet_ext.linear's argument checks and output shape, shared by the CPU and CUDA entry points.
#pragma once
#include <optional>
#include <vector>

#include <c10/util/accumulate.h>

#include "checks.h"

namespace lenet_ext {

// The rows of input flattened to [rows, in_features]: the product of its leading dimensions.
inline int64_t linear_rows(const at::Tensor& input) {
  return c10::multiply_integers(input.sizes().begin(), input.sizes().end() - 1);
}

// input.shape[:-1] + [out_features]
inline std::vector<int64_t> linear_output_shape(const at::Tensor& input, const at::Tensor& weight) {
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end() - 1);
  shape.push_back(weight.size(0));
  return shape;
}

// input (*, in_features), weight (out_features, in_features), bias (out_features) or none.
inline void check_linear_args(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const char* op = "linear") {
  check_dtype(op, "input", input);
  check_same_dtype_device(op, "weight", weight, "input", input);
  TORCH_CHECK(input.dim() >= 1, "lenet_ext.", op, ": expected input to have at least 1 dimension "
              "(*, in_features), but got a 0-D tensor");
  check_dim(op, "weight", weight, 2, "(out_features, in_features)");
  TORCH_CHECK(input.size(-1) == weight.size(1), "lenet_ext.", op, ": expected the last dimension of "
              "input to equal weight.size(1) = in_features = ", weight.size(1), ", but got input of "
              "shape ", input.sizes());
  if (bias.has_value()) {
    check_same_dtype_device(op, "bias", *bias, "input", input);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "lenet_ext.", op, ": expected "
                "bias of shape [", weight.size(0), "] (out_features), but got shape ", bias->sizes());
  }
  check_output_fits(op, linear_output_shape(input, weight), input);
}

inline void check_linear_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                       const at::Tensor& weight) {
  check_linear_args(input, weight, std::nullopt, "linear_backward");
  check_same_dtype_device("linear_backward", "grad_output", grad_output, "input", input);
  check_same_shape("linear_backward", "grad_output", grad_output,
                   linear_output_shape(input, weight));
}

}  // namespace lenet_ext
