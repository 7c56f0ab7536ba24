// The rules the CPU and CUDA kernels share, each defined once: output sizes of conv2d and
// max_pool2d, the first tap of a pooling window inside the input, torch's NaN-aware max and relu.
// Plain C++ with no PyTorch header, so the .cu files (compiled by nvcc without PyTorch) include it.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define LENET_HOST_DEVICE __host__ __device__
#else
#define LENET_HOST_DEVICE
#endif

namespace lenet_ext {

// Extent covered by a dilated kernel: dilation * (kernel - 1) + 1.
LENET_HOST_DEVICE inline int64_t dilated_extent(int64_t kernel, int64_t dilation) {
  return dilation * (kernel - 1) + 1;
}

// torch's convolution output size (floor). Returns < 1 when the kernel does not fit the padded input.
LENET_HOST_DEVICE inline int64_t conv_output_size(int64_t input, int64_t kernel, int64_t stride,
                                                  int64_t padding, int64_t dilation) {
  const int64_t span = input + 2 * padding - dilated_extent(kernel, dilation);
  return span < 0 ? 0 : span / stride + 1;
}

// torch's pooling output size (ATen pooling_output_shape). With ceil_mode the last window may hang
// over the end, but it must start inside the input or the left padding, else it is dropped.
LENET_HOST_DEVICE inline int64_t pool_output_size(int64_t input, int64_t kernel, int64_t stride,
                                                  int64_t padding, int64_t dilation, bool ceil_mode) {
  const int64_t span = input + 2 * padding - dilated_extent(kernel, dilation);
  if (span < 0 && !ceil_mode) return 0;
  const int64_t numerator = span + (ceil_mode ? stride - 1 : 0);
  // floor division that rounds toward minus infinity, as ATen's div_rtn does
  int64_t out = (numerator >= 0 ? numerator / stride : -((-numerator + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= input + padding) --out;
  return out;
}

// The first tap of a window starting at `start` (negative in the left padding) that falls inside
// the input, for taps `dilation` apart.
LENET_HOST_DEVICE inline int64_t first_tap_inside(int64_t start, int64_t dilation) {
  return start < 0 ? (-start + dilation - 1) / dilation : 0;
}

// Whether `value` replaces `best` as a running max, as torch's max_pool2d scans: greater, or NaN
// (the last NaN wins, ties keep the first). `|`, not `||`: branch-free, and the same expression
// serves GCC vectors, whose compares are lane masks.
template <typename T>
LENET_HOST_DEVICE inline auto takes_over(T value, T best) {
  return (value > best) | (value != value);  // NaN != NaN
}

// torch's relu: x < 0 ? 0 : x, so a NaN passes; a select, never a branch on the sign. Scalars or
// GCC vectors.
template <typename T>
LENET_HOST_DEVICE inline T relu(T x) {
  const T zero{};
  return x < zero ? zero : x;
}

// relu's backward from its result: the gradient passes where result > 0 or is NaN (y <= 0 is
// false for NaN), as torch's does. Both operands by value: read unconditionally, so a loop of it
// vectorises (a load under the condition may not be speculated: 10x slower on random signs).
template <typename T>
LENET_HOST_DEVICE inline T relu_grad(T grad, T result) {
  return result <= T(0) ? T(0) : grad;
}

}  // namespace lenet_ext
