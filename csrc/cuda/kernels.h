// The CUDA kernels' launchers: raw pointers, sizes and a stream, no PyTorch type, so the .cu files
// that define them compile with nvcc alone and csrc/cuda/registration.cpp calls them. Each launcher
// enqueues exactly one kernel on `stream` (none when there is nothing to compute) and returns at
// once; the caller checks the launch. Instantiated for float, double, __nv_bfloat16 and __half.
#pragma once
#include <cstdint>

#include "runtime.h"

namespace lenet_ext::cuda {

// The type a kernel computes in for a storage type: float for the two 2-byte types (each load
// widened, every product and sum in float, one rounding at the store), the type itself otherwise.
template <typename scalar_t>
struct Accumulate {
  using type = scalar_t;
};
template <>
struct Accumulate<__nv_bfloat16> {
  using type = float;
};
template <>
struct Accumulate<__half> {
  using type = float;
};
template <typename scalar_t>
using acc_t = typename Accumulate<scalar_t>::type;

// relu --------------------------------------------------------------------------------------------

template <typename scalar_t>
void launch_relu(const scalar_t* input, scalar_t* output, int64_t numel, cudaStream_t stream);

template <typename scalar_t>
void launch_relu_backward(const scalar_t* grad_output, const scalar_t* result, scalar_t* grad_input,
                          int64_t numel, cudaStream_t stream);

// linear: input [rows, in_features], weight [out_features, in_features], all contiguous -----------

template <typename scalar_t>
void launch_linear(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                   scalar_t* output, int64_t rows, int64_t in_features, int64_t out_features,
                   cudaStream_t stream);

template <typename scalar_t>
void launch_linear_grad_input(const scalar_t* grad_output, const scalar_t* weight,
                              scalar_t* grad_input, int64_t rows, int64_t in_features,
                              int64_t out_features, cudaStream_t stream);

template <typename scalar_t>
void launch_linear_grad_weight(const scalar_t* grad_output, const scalar_t* input,
                               scalar_t* grad_weight, int64_t rows, int64_t in_features,
                               int64_t out_features, cudaStream_t stream);

template <typename scalar_t>
void launch_linear_grad_bias(const scalar_t* grad_output, scalar_t* grad_bias, int64_t rows,
                             int64_t out_features, cudaStream_t stream);

// conv2d: input [batch, in_channels, in_h, in_w], weight [out_channels, in_channels / groups,
// kernel_h, kernel_w], output [batch, out_channels, out_h, out_w], all contiguous -----------------

struct Conv2dShape {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, out_h, out_w;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t groups;
};

template <typename scalar_t>
void launch_conv2d(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                   scalar_t* output, const Conv2dShape& shape, cudaStream_t stream);

template <typename scalar_t>
void launch_conv2d_grad_input(const scalar_t* grad_output, const scalar_t* weight,
                              scalar_t* grad_input, const Conv2dShape& shape, cudaStream_t stream);

template <typename scalar_t>
void launch_conv2d_grad_weight(const scalar_t* grad_output, const scalar_t* input,
                               scalar_t* grad_weight, const Conv2dShape& shape,
                               cudaStream_t stream);

template <typename scalar_t>
void launch_conv2d_grad_bias(const scalar_t* grad_output, scalar_t* grad_bias,
                             const Conv2dShape& shape, cudaStream_t stream);

// max_pool2d: `planes` contiguous input planes [in_h, in_w] and output planes [out_h, out_w];
// indices are int64 offsets h * in_w + w into the plane ----------------------------------------

struct Pool2dShape {
  int64_t planes, in_h, in_w, out_h, out_w;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};

template <typename scalar_t>
void launch_max_pool2d(const scalar_t* input, scalar_t* output, int64_t* indices,
                       const Pool2dShape& shape, cudaStream_t stream);

// bad_index points to two device int64s, zero on entry: if an index lies outside
// [0, in_h * in_w), the first is set to 1 and the second to such an index. That index is never
// followed, so memory outside the plane is never touched. `sums`: planes * in_plane device
// elements where acc_t<scalar_t> is wider than scalar_t (the sums before their one rounding),
// else unused (null): grad_input holds its own sums.
template <typename scalar_t>
void launch_max_pool2d_backward(const scalar_t* grad_output, const int64_t* indices,
                                scalar_t* grad_input, acc_t<scalar_t>* sums, int64_t planes,
                                int64_t in_plane, int64_t out_plane, int64_t* bad_index,
                                cudaStream_t stream);

// The backward's derivative: output[plane, o] = input[plane, indices[plane, o]], indices' shape;
// bad_index as above (an output whose index lies outside the plane is 0).
template <typename scalar_t>
void launch_max_pool2d_gather(const scalar_t* input, const int64_t* indices, scalar_t* output,
                              int64_t planes, int64_t in_plane, int64_t out_plane,
                              int64_t* bad_index, cudaStream_t stream);

}  // namespace lenet_ext::cuda
