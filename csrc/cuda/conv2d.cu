// conv2d on CUDA, direct (no im2col buffer): forward gives each thread one output element, which
// sums its group's in_channels/groups x kernel_h x kernel_w products in that order (bias first);
// grad_input gives each thread one input element, which gathers the (output, weight) pairs that
// touched it; grad_weight gives each weight element one block, whose threads sum fixed strided
// parts of the batch x out_h x out_w products (coalesced over output positions) before a fixed
// shared-memory tree; grad_bias is the same per output channel. No atomics: bitwise deterministic.
// Each sum is kept in acc_t (float for bfloat16 and half: every load widened, every product and
// sum in float) in the orders above, and rounded once, at its store.
#include "common.cuh"
#include "kernels.h"

namespace lenet_ext::cuda {
namespace {

template <typename scalar_t>
__global__ void conv2d_kernel(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                              scalar_t* output, Conv2dShape s) {
  using acc = acc_t<scalar_t>;
  const int64_t group_in = s.in_channels / s.groups, group_out = s.out_channels / s.groups;
  const int64_t numel = s.batch * s.out_channels * s.out_h * s.out_w;
  LENET_CUDA_KERNEL_LOOP(index, numel) {
    const int64_t ow = index % s.out_w, oh = index / s.out_w % s.out_h;
    const int64_t o = index / (s.out_w * s.out_h) % s.out_channels;
    const int64_t n = index / (s.out_w * s.out_h * s.out_channels);
    const int64_t first_channel = o / group_out * group_in;
    const scalar_t* in = input + (n * s.in_channels + first_channel) * s.in_h * s.in_w;
    const scalar_t* w = weight + o * group_in * s.kernel_h * s.kernel_w;
    const int64_t h0 = oh * s.stride_h - s.pad_h, w0 = ow * s.stride_w - s.pad_w;
    acc sum = bias != nullptr ? static_cast<acc>(bias[o]) : acc(0);
    for (int64_t c = 0; c < group_in; ++c) {
      for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
        const int64_t ih = h0 + kh * s.dilation_h;
        const bool row_inside = ih >= 0 && ih < s.in_h;
        for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
          const int64_t iw = w0 + kw * s.dilation_w;
          // padding is an input of zeros, as on CPU: an infinite weight there gives NaN (0 * inf)
          const acc x = row_inside && iw >= 0 && iw < s.in_w
                            ? static_cast<acc>(in[(c * s.in_h + ih) * s.in_w + iw]) : acc(0);
          sum += x * static_cast<acc>(w[(c * s.kernel_h + kh) * s.kernel_w + kw]);
        }
      }
    }
    output[index] = static_cast<scalar_t>(sum);
  }
}

// Input (ih, iw) met weight (kh, kw) at output (oh, ow) when oh * stride_h - pad_h + kh *
// dilation_h == ih, and likewise for w: walk the kernel and keep the offsets that land on an
// output exactly.
template <typename scalar_t>
__global__ void conv2d_grad_input_kernel(const scalar_t* grad_output, const scalar_t* weight,
                                         scalar_t* grad_input, Conv2dShape s) {
  using acc = acc_t<scalar_t>;
  const int64_t group_in = s.in_channels / s.groups, group_out = s.out_channels / s.groups;
  const int64_t numel = s.batch * s.in_channels * s.in_h * s.in_w;
  LENET_CUDA_KERNEL_LOOP(index, numel) {
    const int64_t iw = index % s.in_w, ih = index / s.in_w % s.in_h;
    const int64_t c = index / (s.in_w * s.in_h) % s.in_channels;
    const int64_t n = index / (s.in_w * s.in_h * s.in_channels);
    const int64_t first_out = c / group_in * group_out, channel_in_group = c % group_in;
    acc sum = 0;
    for (int64_t o = first_out; o < first_out + group_out; ++o) {
      const scalar_t* grad = grad_output + (n * s.out_channels + o) * s.out_h * s.out_w;
      const scalar_t* w = weight + (o * group_in + channel_in_group) * s.kernel_h * s.kernel_w;
      for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
        const int64_t h_offset = ih + s.pad_h - kh * s.dilation_h;
        if (h_offset < 0 || h_offset % s.stride_h != 0) continue;
        const int64_t oh = h_offset / s.stride_h;
        if (oh >= s.out_h) continue;
        for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
          const int64_t w_offset = iw + s.pad_w - kw * s.dilation_w;
          if (w_offset < 0 || w_offset % s.stride_w != 0) continue;
          const int64_t ow = w_offset / s.stride_w;
          if (ow >= s.out_w) continue;
          sum += static_cast<acc>(grad[oh * s.out_w + ow]) *
                 static_cast<acc>(w[kh * s.kernel_w + kw]);
        }
      }
    }
    grad_input[index] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    conv2d_grad_weight_kernel(const scalar_t* grad_output, const scalar_t* input,
                              scalar_t* grad_weight, Conv2dShape s) {
  using acc = acc_t<scalar_t>;
  const int64_t group_in = s.in_channels / s.groups, group_out = s.out_channels / s.groups;
  const int64_t out_plane = s.out_h * s.out_w, count = s.batch * out_plane;
  const int64_t numel = s.out_channels * group_in * s.kernel_h * s.kernel_w;
  for (int64_t index = blockIdx.x; index < numel; index += gridDim.x) {
    const int64_t kw = index % s.kernel_w, kh = index / s.kernel_w % s.kernel_h;
    const int64_t channel_in_group = index / (s.kernel_w * s.kernel_h) % group_in;
    const int64_t o = index / (s.kernel_w * s.kernel_h * group_in);
    const int64_t c = o / group_out * group_in + channel_in_group;
    acc sum = 0;
    for (int64_t r = threadIdx.x; r < count; r += kThreads) {
      const int64_t n = r / out_plane, p = r % out_plane;
      const int64_t ih = p / s.out_w * s.stride_h - s.pad_h + kh * s.dilation_h;
      const int64_t iw = p % s.out_w * s.stride_w - s.pad_w + kw * s.dilation_w;
      if (ih < 0 || ih >= s.in_h || iw < 0 || iw >= s.in_w) continue;
      sum += static_cast<acc>(grad_output[(n * s.out_channels + o) * out_plane + p]) *
             static_cast<acc>(input[((n * s.in_channels + c) * s.in_h + ih) * s.in_w + iw]);
    }
    const acc total = block_sum(sum);
    if (threadIdx.x == 0) grad_weight[index] = static_cast<scalar_t>(total);
  }
}

}  // namespace

template <typename scalar_t>
void launch_conv2d(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                   scalar_t* output, const Conv2dShape& shape, cudaStream_t stream) {
  const int64_t numel = shape.batch * shape.out_channels * shape.out_h * shape.out_w;
  if (numel == 0) return;
  LENET_CUDA_LAUNCH(conv2d_kernel<scalar_t>, blocks_for(numel), kThreads, 0, stream, input, weight,
                    bias, output, shape);
}

template <typename scalar_t>
void launch_conv2d_grad_input(const scalar_t* grad_output, const scalar_t* weight,
                              scalar_t* grad_input, const Conv2dShape& shape, cudaStream_t stream) {
  const int64_t numel = shape.batch * shape.in_channels * shape.in_h * shape.in_w;
  if (numel == 0) return;
  LENET_CUDA_LAUNCH(conv2d_grad_input_kernel<scalar_t>, blocks_for(numel), kThreads, 0, stream,
                    grad_output, weight, grad_input, shape);
}

template <typename scalar_t>
void launch_conv2d_grad_weight(const scalar_t* grad_output, const scalar_t* input,
                               scalar_t* grad_weight, const Conv2dShape& shape,
                               cudaStream_t stream) {
  const int64_t numel =
      shape.out_channels * (shape.in_channels / shape.groups) * shape.kernel_h * shape.kernel_w;
  if (numel == 0) return;
  const auto blocks = static_cast<unsigned int>(std::min<int64_t>(numel, int64_t{1} << 20));
  LENET_CUDA_LAUNCH(conv2d_grad_weight_kernel<scalar_t>, blocks, kThreads, 0, stream, grad_output,
                    input, grad_weight, shape);
}

template <typename scalar_t>
void launch_conv2d_grad_bias(const scalar_t* grad_output, scalar_t* grad_bias,
                             const Conv2dShape& shape, cudaStream_t stream) {
  launch_channel_sum(grad_output, grad_bias, shape.batch, shape.out_channels,
                     shape.out_h * shape.out_w, stream);
}

#define INSTANTIATE(T)                                                                        \
  template void launch_conv2d<T>(const T*, const T*, const T*, T*, const Conv2dShape&,        \
                                 cudaStream_t);                                               \
  template void launch_conv2d_grad_input<T>(const T*, const T*, T*, const Conv2dShape&,       \
                                            cudaStream_t);                                    \
  template void launch_conv2d_grad_weight<T>(const T*, const T*, T*, const Conv2dShape&,      \
                                             cudaStream_t);                                   \
  template void launch_conv2d_grad_bias<T>(const T*, T*, const Conv2dShape&, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(double)
INSTANTIATE(__nv_bfloat16)
INSTANTIATE(__half)

}  // namespace lenet_ext::cuda
