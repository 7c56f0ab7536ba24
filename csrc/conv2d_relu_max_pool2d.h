// lenet_ext.conv2d_relu_max_pool2d (LeNet's feature block: valid stride-1 convolution + bias, ReLU,
// 2x2 stride-2 max-pool): its sizes and argument checks. The kernels: csrc/cpu/fused/.
#pragma once
#include <vector>

#include "checks.h"
#include "cpu/kernels.h"

namespace lenet_ext {

// Sizes of the block for input (N, C, H, W) and weight (O, C, kh, kw).
struct BlockShape {
  cpu::ConvShape conv;       // the convolution of one image
  int64_t out_h, out_w;      // pooled plane: floor(conv / 2), as max_pool2d(2) gives
  std::vector<int64_t> output_sizes(int64_t batch) const {
    return {batch, conv.out_channels, out_h, out_w};
  }
};

// Checks input and weight and returns the block's sizes (the forward checks bias itself).
inline BlockShape check_conv2d_relu_max_pool2d_args(const at::Tensor& input,
                                                    const at::Tensor& weight,
                                                    const char* op) {
  check_dtype(op, "input", input);
  check_same_dtype_device(op, "weight", weight, "input", input);
  check_dim(op, "input", input, 4, "(N, C, H, W)");
  check_dim(op, "weight", weight, 4, "(out_channels, in_channels, kernel_h, kernel_w)");
  TORCH_CHECK(weight.size(0) > 0 && weight.size(2) > 0 && weight.size(3) > 0, "lenet_ext.", op,
              ": expected weight with positive out_channels and kernel size, but got weight of "
              "shape ", weight.sizes());
  TORCH_CHECK(input.size(1) == weight.size(1), "lenet_ext.", op, ": expected input to have "
              "weight.size(1) = ", weight.size(1), " channels, but got input of shape ",
              input.sizes());
  const int64_t conv_h = input.size(2) - weight.size(2) + 1;
  const int64_t conv_w = input.size(3) - weight.size(3) + 1;
  TORCH_CHECK(conv_h >= 2 && conv_w >= 2, "lenet_ext.", op, ": expected input at least ",
              weight.size(2) + 1, " x ", weight.size(3) + 1, " (kernel + 1, so that the 2x2 "
              "pool has a window), but got input of shape ", input.sizes());
  return {{input.size(1), input.size(2), input.size(3), weight.size(0), conv_h, conv_w,
           weight.size(2), weight.size(3), 1, 1, 0, 0, 1, 1},
          conv_h / 2, conv_w / 2};
}

}  // namespace lenet_ext
