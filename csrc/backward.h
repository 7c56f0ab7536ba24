// What the entry points of the layers with a weight (linear, conv2d, the fused block), CPU and
// CUDA, share: the optional bias's data, and the backward's outputs, allocated as output_mask
// selects.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <array>
#include <optional>
#include <tuple>

namespace lenet_ext {

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
