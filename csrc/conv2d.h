// lenet_ext.conv2d's argument checks and output shape, shared by the CPU and CUDA entry points.
// The op itself takes batched (N, C, H, W) input and symmetric padding; lenet_ext.functional turns
// torch's other forms (unbatched input, 'same'/'valid' padding) into that.
#pragma once
#include <optional>
#include <vector>

#include "checks.h"
#include "shapes.h"

namespace lenet_ext {

// Validates everything the conv2d kernels rely on and returns the output shape
// (N, out_channels, out_h, out_w). Messages follow torch's own checks, prefixed with the op name.
inline std::vector<int64_t> check_conv2d_args(const at::Tensor& input, const at::Tensor& weight,
                                              const std::optional<at::Tensor>& bias,
                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                              at::IntArrayRef dilation, int64_t groups,
                                              const char* op = "conv2d") {
  check_dtype(op, "input", input);
  check_same_dtype_device(op, "weight", weight, "input", input);
  TORCH_CHECK(input.dim() == 4, "lenet_ext.", op, ": expected input to be a 4-D tensor "
              "(N, C, H, W), but got a ", input.dim(), "-D tensor of shape ", input.sizes(),
              " (lenet_ext.functional.conv2d also takes unbatched 3-D (C, H, W) input)");
  check_dim(op, "weight", weight, 4, "(out_channels, in_channels / groups, kernel_h, kernel_w)");
  check_array_size(op, "stride", stride, 2);
  check_array_size(op, "padding", padding, 2);
  check_array_size(op, "dilation", dilation, 2);
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "lenet_ext.", op,
              ": expected stride to be positive, but got ", stride);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, "lenet_ext.", op,
              ": expected padding to be non-negative, but got ", padding);
  // torch takes a dilation of 0 (a kernel of extent 1) where the input has no elements
  const int64_t least_dilation = input.numel() == 0 ? 0 : 1;
  TORCH_CHECK(dilation[0] >= least_dilation && dilation[1] >= least_dilation, "lenet_ext.", op,
              ": expected dilation to be positive, but got ", dilation);
  TORCH_CHECK(groups > 0, "lenet_ext.", op, ": expected groups to be positive, but got ", groups);
  check_int32_range(op, "stride", stride);
  check_int32_range(op, "padding", padding);
  check_int32_range(op, "dilation", dilation);

  const int64_t out_channels = weight.size(0);
  TORCH_CHECK(out_channels > 0 && out_channels % groups == 0, "lenet_ext.", op, ": expected "
              "weight.size(0) (out_channels) to be a positive multiple of groups = ", groups,
              ", but got weight of shape ", weight.sizes());
  // the product wrapped as the release build's -fwrapv wraps it (and checks.py mirrors), without
  // the sanitizer build's undefined signed overflow (weight.size(1) and groups may be near 2^62)
  const int64_t channels = static_cast<int64_t>(static_cast<uint64_t>(weight.size(1)) *
                                                static_cast<uint64_t>(groups));
  TORCH_CHECK(input.size(1) == channels, "lenet_ext.", op, ": expected input to "
              "have weight.size(1) * groups = ", weight.size(1), " * ", groups, " = ",
              channels, " channels, but got input of shape ", input.sizes());
  TORCH_CHECK(weight.size(2) > 0 && weight.size(3) > 0, "lenet_ext.", op, ": expected a kernel "
              "of positive size, but got weight of shape ", weight.sizes());
  TORCH_CHECK(input.size(2) > 0 && input.size(3) > 0, "lenet_ext.", op, ": expected input of "
              "positive height and width, but got input of shape ", input.sizes());
  if (bias.has_value()) {
    check_same_dtype_device(op, "bias", *bias, "input", input);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_channels, "lenet_ext.", op,
                ": expected bias of shape [", out_channels, "] (out_channels), but got shape ",
                bias->sizes());
  }

  std::vector<int64_t> shape = {input.size(0), out_channels, 0, 0};
  for (int64_t d = 0; d < 2; ++d) {
    const int64_t padded = input.size(2 + d) + 2 * padding[d];
    const int64_t extent = dilated_extent(weight.size(2 + d), dilation[d]);
    TORCH_CHECK(extent <= padded, "lenet_ext.", op, ": expected the kernel, of size (",
                dilated_extent(weight.size(2), dilation[0]), " x ",
                dilated_extent(weight.size(3), dilation[1]), ") after dilation, to fit the padded "
                "input, but got padded input of size (", input.size(2) + 2 * padding[0], " x ",
                input.size(3) + 2 * padding[1], ")");
    shape[2 + d] = conv_output_size(input.size(2 + d), weight.size(2 + d), stride[d], padding[d],
                                    dilation[d]);
  }
  check_output_fits(op, shape, input);
  return shape;
}

inline void check_conv2d_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                       const at::Tensor& weight, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation,
                                       int64_t groups) {
  const char* op = "conv2d_backward";
  const auto output_shape =
      check_conv2d_args(input, weight, std::nullopt, stride, padding, dilation, groups, op);
  check_same_dtype_device(op, "grad_output", grad_output, "input", input);
  check_same_shape(op, "grad_output", grad_output, output_shape);
}

}  // namespace lenet_ext
