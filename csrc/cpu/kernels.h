// The CPU kernels of conv2d, linear and relu as plain functions of raw pointers and sizes: the op entry
// points (conv2d/op.cpp, linear.cpp, relu.cpp) call them after checking and allocating, and so do the fused
// ops, which chain them without going back through the dispatcher. Arrays are contiguous (NCHW,
// row-major); a null output pointer means that output is not wanted. Defined for float and double.
#pragma once
#include <cstdint>

namespace lenet_ext::cpu {

// The convolution of one group of one image; the same for every group and image.
struct ConvShape {
  int64_t channels, in_h, in_w;        // input channels of the group, input plane
  int64_t out_channels, out_h, out_w;  // output channels of the group, output plane
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;

  int64_t taps() const { return channels * kernel_h * kernel_w; }  // rows of the unrolled input
  int64_t positions() const { return out_h * out_w; }
  int64_t input_block() const { return channels * in_h * in_w; }
  int64_t output_block() const { return out_channels * positions(); }
  int64_t weight_block() const { return out_channels * taps(); }
  int64_t multiply_adds() const { return weight_block() * positions(); }
};

// input [batch, groups * channels, in_h, in_w], weight [groups * out_channels, channels, kernel_h,
// kernel_w], bias [groups * out_channels] or null, output [batch, groups * out_channels, out_h, out_w]
template <typename scalar_t>
void conv2d_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                    scalar_t* output, int64_t batch, int64_t groups, const ConvShape& shape);

template <typename scalar_t>
void conv2d_backward(const scalar_t* grad_output, const scalar_t* input, const scalar_t* weight,
                     scalar_t* grad_input, scalar_t* grad_weight, scalar_t* grad_bias,
                     int64_t batch, int64_t groups, const ConvShape& shape);

// input [rows, in_features], weight [out_features, in_features], bias [out_features] or null,
// output [rows, out_features]
template <typename scalar_t>
void linear_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                    scalar_t* output, int64_t rows, int64_t in_features, int64_t out_features);

template <typename scalar_t>
void linear_backward(const scalar_t* grad_output, const scalar_t* input, const scalar_t* weight,
                     scalar_t* grad_input, scalar_t* grad_weight, scalar_t* grad_bias,
                     int64_t rows, int64_t in_features, int64_t out_features);

// relu of numel elements; output may be input (and grad_input grad_output): an in-place pass
template <typename scalar_t>
void relu_forward(const scalar_t* input, scalar_t* output, int64_t numel);

template <typename scalar_t>
void relu_backward(const scalar_t* grad_output, const scalar_t* result, scalar_t* grad_input,
                   int64_t numel);

}  // namespace lenet_ext::cpu
