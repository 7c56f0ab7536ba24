// lenet_ext.max_pool2d's argument checks and output shape, shared by the CPU and CUDA entry points.
#pragma once
#include <vector>

#include "checks.h"
#include "shapes.h"

namespace lenet_ext {

// input (N, C, H, W) or (C, H, W), N may be 0. Returns the output shape, of the input's rank.
inline std::vector<int64_t> check_max_pool2d_args(const at::Tensor& input,
                                                  at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, bool ceil_mode,
                                                  const char* op = "max_pool2d") {
  check_dtype(op, "input", input);
  const int64_t dim = input.dim();
  TORCH_CHECK(dim == 3 || dim == 4, "lenet_ext.", op, ": expected input to be a 3-D (C, H, W) or "
              "4-D (N, C, H, W) tensor, but got a ", dim, "-D tensor of shape ", input.sizes());
  TORCH_CHECK(input.size(-1) > 0 && input.size(-2) > 0 && input.size(-3) > 0,
              "lenet_ext.", op, ": expected input to have non-zero C, H and W (only N may be 0), "
              "but got shape ", input.sizes());
  check_array_size(op, "kernel_size", kernel_size, 2);
  check_array_size(op, "stride", stride, 2);
  check_array_size(op, "padding", padding, 2);
  check_array_size(op, "dilation", dilation, 2);
  TORCH_CHECK(kernel_size[0] > 0 && kernel_size[1] > 0, "lenet_ext.", op, ": expected kernel_size "
              "to be positive, but got ", kernel_size);
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "lenet_ext.", op, ": expected stride to be "
              "positive, but got ", stride);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, "lenet_ext.", op, ": expected dilation to be "
              "positive, but got ", dilation);
  check_int32_range(op, "kernel_size", kernel_size);
  check_int32_range(op, "stride", stride);
  check_int32_range(op, "dilation", dilation);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0 && padding[0] <= kernel_size[0] / 2 &&
              padding[1] <= kernel_size[1] / 2, "lenet_ext.", op, ": expected padding to be "
              "non-negative and at most half of kernel_size ", kernel_size, ", but got ", padding);
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  for (int d = 0; d < 2; ++d) {
    const int64_t in = input.size(dim - 2 + d);
    shape[dim - 2 + d] = pool_output_size(in, kernel_size[d], stride[d], padding[d], dilation[d],
                                          ceil_mode);
  }
  const int64_t out_h = shape[dim - 2], out_w = shape[dim - 1];
  TORCH_CHECK(out_h >= 1 && out_w >= 1, "lenet_ext.", op, ": expected an output of at least 1x1, "
              "but input of shape ", input.sizes(), " with kernel_size ", kernel_size, ", stride ",
              stride, ", padding ", padding, ", dilation ", dilation, " and ceil_mode=",
              ceil_mode ? "True" : "False", " gives ", out_h, "x", out_w);
  return shape;
}

// `arg` a batch of planes (3-D or 4-D) of a dtype the kernels take, and `indices` int64 on its
// device: what max_pool2d_backward and max_pool2d_gather ask of their tensors first.
inline void check_planes_and_indices(const char* op, const char* arg, const at::Tensor& t,
                                     const at::Tensor& indices) {
  check_dtype(op, arg, t);
  TORCH_CHECK(t.dim() == 3 || t.dim() == 4, "lenet_ext.", op, ": expected ", arg, " to be a 3-D "
              "(C, H, W) or 4-D (N, C, H, W) tensor, but got a ", t.dim(), "-D tensor of shape ",
              t.sizes());
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong, "lenet_ext.", op, ": expected indices to "
                   "have dtype int64, but got ", indices.scalar_type());
  TORCH_CHECK(indices.device() == t.device(), "lenet_ext.", op, ": expected indices to be on the "
              "same device as ", arg, " (", t.device(), "), but got ", indices.device());
}

// grad_output and indices of the forward's output shape; input_size the forward's input shape.
inline void check_max_pool2d_backward_args(const at::Tensor& grad_output, const at::Tensor& indices,
                                           at::IntArrayRef input_size) {
  constexpr const char* op = "max_pool2d_backward";
  check_planes_and_indices(op, "grad_output", grad_output, indices);
  const int64_t dim = grad_output.dim();
  check_same_shape(op, "indices", indices, grad_output.sizes());
  check_array_size(op, "input_size", input_size, dim);
  bool leading_match = true;
  for (int64_t d = 0; d < dim - 2; ++d) leading_match &= input_size[d] == grad_output.size(d);
  TORCH_CHECK(leading_match && input_size[dim - 2] >= 0 && input_size[dim - 1] >= 0,
              "lenet_ext.max_pool2d_backward: expected input_size to match grad_output (shape ",
              grad_output.sizes(), ") in all but the last two dimensions and to be non-negative, "
              "but got ", input_size);
  check_output_fits(op, input_size, grad_output);
}

// max_pool2d_gather's arguments: input (..., H, W) of a dtype the kernels take, indices
// (..., out_h, out_w) int64 on its device with the same leading sizes (the output's shape).
inline void check_max_pool2d_gather_args(const at::Tensor& input, const at::Tensor& indices) {
  constexpr const char* op = "max_pool2d_gather";
  check_planes_and_indices(op, "input", input, indices);
  const int64_t dim = input.dim();
  bool leading_match = indices.dim() == dim;
  for (int64_t d = 0; leading_match && d < dim - 2; ++d)
    leading_match = indices.size(d) == input.size(d);
  TORCH_CHECK(leading_match, "lenet_ext.max_pool2d_gather: expected indices to match input "
              "(shape ", input.sizes(), ") in all but the last two dimensions, but got shape ",
              indices.sizes());
}

// The entry points' report of an index met outside the input plane (and not followed).
inline void check_indices_in_plane(const char* op, bool found_bad_index, int64_t bad_index,
                                   int64_t in_plane, at::IntArrayRef input_size) {
  TORCH_CHECK(!found_bad_index, "lenet_ext.", op, ": expected indices in [0, H*W) = [0, ",
              in_plane, ") for input_size ", input_size, ", but got ", bad_index);
}

}  // namespace lenet_ext
