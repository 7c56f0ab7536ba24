// What the entry points of the ops, CPU and CUDA, share once their arguments are checked (csrc/<op>.h):
// the tensors as kernels read them (contiguous), the backward's outputs allocated as output_mask
// selects, and the raw pointers of optional tensors.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <array>
#include <optional>
#include <tuple>

namespace lenet_ext {

// The tensors as the kernels read them: contiguous, copied only where they are not. For
// `const auto [x, w] = contiguous(input, weight);`.
template <typename... Tensors>
auto contiguous(const Tensors&... tensors) {
  return std::make_tuple(tensors.expect_contiguous()...);
}

// A layer's optional bias, contiguous.
inline std::optional<at::Tensor> contiguous_bias(const std::optional<at::Tensor>& bias) {
  return bias ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
}

// (grad_input, grad_weight, grad_bias) for a weight whose first dimension is the output channels or
// features: uninitialised tensors where output_mask selects them, undefined tensors elsewhere.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_grads(const at::Tensor& input,
                                                                  const at::Tensor& weight,
                                                                  std::array<bool, 3> output_mask) {
  return {output_mask[0] ? at::empty(input.sizes(), input.options()) : at::Tensor(),
          output_mask[1] ? at::empty(weight.sizes(), weight.options()) : at::Tensor(),
          output_mask[2] ? at::empty({weight.size(0)}, weight.options()) : at::Tensor()};
}

// An optional tensor's data for a kernel: null where there is none (a layer without bias).
template <typename scalar_t>
const scalar_t* optional_data(const std::optional<at::Tensor>& t) {
  return t ? t->const_data_ptr<scalar_t>() : nullptr;
}

// A gradient's data for a kernel: null where autograd did not ask for it.
template <typename scalar_t>
scalar_t* data_or_null(at::Tensor& grad) {
  return grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr;
}

}  // namespace lenet_ext
