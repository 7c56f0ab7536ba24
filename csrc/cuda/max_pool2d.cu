// max_pool2d on CUDA. Forward: one thread per output element scans its window row by row, as
// torch's kernel does (a NaN wins, ties keep the first cell, padding never wins), comparing in
// acc_t; the max is stored back exactly (a NaN as a quiet NaN). Backward: the schema gives no
// window geometry, so no input cell can find the windows covering it; instead one warp owns each
// plane, zeroes its sums, then takes its grads 32 at a time in output order: lanes whose indices
// coincide sum their grads in lane order (shuffles) and the first adds that to the cell's sum, so
// chunk sums are added in output order, all in acc_t; for bfloat16 and half the sums live in a
// float workspace and each is rounded into grad_input once, at the end. Fixed order, no atomics:
// bitwise deterministic. An index outside the plane is flagged, not used. Gather (the backward's
// derivative): one thread per output element copies its plane's element at its index.
#include <cmath>
#include <type_traits>

#include "../shapes.h"
#include "common.cuh"
#include "kernels.h"

namespace lenet_ext::cuda {
namespace {

template <typename scalar_t>
__global__ void max_pool2d_kernel(const scalar_t* input, scalar_t* output, int64_t* indices,
                                  Pool2dShape s) {
  const int64_t numel = s.planes * s.out_h * s.out_w;
  LENET_CUDA_KERNEL_LOOP(index, numel) {
    const int64_t ow = index % s.out_w, oh = index / s.out_w % s.out_h;
    using acc = acc_t<scalar_t>;
    const int64_t plane = index / (s.out_w * s.out_h);
    const scalar_t* in = input + plane * s.in_h * s.in_w;
    const int64_t h_start = oh * s.stride_h - s.pad_h, w_start = ow * s.stride_w - s.pad_w;
    const int64_t h_stop = h_start + (s.kernel_h - 1) * s.dilation_h + 1;
    const int64_t w_stop = w_start + (s.kernel_w - 1) * s.dilation_w + 1;
    const int64_t h_end = h_stop < s.in_h ? h_stop : s.in_h;
    const int64_t w_end = w_stop < s.in_w ? w_stop : s.in_w;
    const int64_t h_first = h_start + first_tap_inside(h_start, s.dilation_h) * s.dilation_h;
    const int64_t w_first = w_start + first_tap_inside(w_start, s.dilation_w) * s.dilation_w;
    acc max_value = -static_cast<acc>(INFINITY);
    int64_t max_index = h_first * s.in_w + w_first;
    for (int64_t h = h_first; h < h_end; h += s.dilation_h) {
      for (int64_t w = w_first; w < w_end; w += s.dilation_w) {
        const acc value = static_cast<acc>(in[h * s.in_w + w]);
        if (value > max_value || isnan(value)) {
          max_value = value;
          max_index = h * s.in_w + w;
        }
      }
    }
    // exact: max_value is an input element, or -inf for a window wholly in the padding
    output[index] = static_cast<scalar_t>(max_value);
    indices[index] = max_index;
  }
}

// Needs blockDim.x == kThreads; a plane's whole warp walks every loop below together, as the
// shuffles require. `sums` is grad_input itself where acc_t is scalar_t.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    max_pool2d_backward_kernel(const scalar_t* grad_output, const int64_t* indices,
                               scalar_t* grad_input, acc_t<scalar_t>* sums, int64_t planes,
                               int64_t in_plane, int64_t out_plane, int64_t* bad_index) {
  using acc = acc_t<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  for (int64_t plane = int64_t{blockIdx.x} * kWarps + threadIdx.x / kWarp; plane < planes;
       plane += int64_t{gridDim.x} * kWarps) {
    acc* sum_in = sums + plane * in_plane;
    for (int64_t i = lane; i < in_plane; i += kWarp) sum_in[i] = acc(0);
    __syncwarp();  // orders the zeroing before other lanes' additions
    for (int64_t base = 0; base < out_plane; base += kWarp) {
      const int64_t o = plane * out_plane + base + lane;
      const bool active = base + lane < out_plane;
      const int64_t target = active ? indices[o] : -1;
      const acc grad = active ? static_cast<acc>(grad_output[o]) : acc(0);
      const bool valid = target >= 0 && target < in_plane;  // inactive lanes are invalid
      if (active && !valid) {
        bad_index[1] = target;
        bad_index[0] = 1;
      }
      acc sum = 0;
      bool first = true;
      for (int other = 0; other < kWarp; ++other) {
        const int64_t other_target = __shfl_sync(kAllLanes, target, other);
        const acc other_grad = __shfl_sync(kAllLanes, grad, other);
        if (other_target == target) {
          sum += other_grad;
          first = first && other >= lane;
        }
      }
      if (valid && first) sum_in[target] += sum;
      __syncwarp();  // orders this chunk's additions before the next chunk's reads
    }
    if constexpr (!std::is_same_v<acc, scalar_t>) {  // the one rounding of each cell's sum
      scalar_t* grad_in = grad_input + plane * in_plane;
      for (int64_t i = lane; i < in_plane; i += kWarp)
        grad_in[i] = static_cast<scalar_t>(sum_in[i]);
    }
  }
}

template <typename scalar_t>
__global__ void max_pool2d_gather_kernel(const scalar_t* input, const int64_t* indices,
                                         scalar_t* output, int64_t numel, int64_t in_plane,
                                         int64_t out_plane, int64_t* bad_index) {
  LENET_CUDA_KERNEL_LOOP(index, numel) {
    const int64_t target = indices[index];
    if (target >= 0 && target < in_plane) {
      output[index] = input[index / out_plane * in_plane + target];
    } else {
      output[index] = scalar_t(0);
      bad_index[1] = target;
      bad_index[0] = 1;
    }
  }
}

}  // namespace

template <typename scalar_t>
void launch_max_pool2d(const scalar_t* input, scalar_t* output, int64_t* indices,
                       const Pool2dShape& shape, cudaStream_t stream) {
  const int64_t numel = shape.planes * shape.out_h * shape.out_w;
  if (numel == 0) return;
  LENET_CUDA_LAUNCH(max_pool2d_kernel<scalar_t>, blocks_for(numel), kThreads, 0, stream, input,
                    output, indices, shape);
}

template <typename scalar_t>
void launch_max_pool2d_backward(const scalar_t* grad_output, const int64_t* indices,
                                scalar_t* grad_input, acc_t<scalar_t>* sums, int64_t planes,
                                int64_t in_plane, int64_t out_plane, int64_t* bad_index,
                                cudaStream_t stream) {
  if (planes == 0 || in_plane == 0) return;
  if constexpr (std::is_same_v<acc_t<scalar_t>, scalar_t>) sums = grad_input;
  const int64_t blocks = std::min<int64_t>((planes + kWarps - 1) / kWarps, int64_t{1} << 20);
  LENET_CUDA_LAUNCH(max_pool2d_backward_kernel<scalar_t>, static_cast<unsigned int>(blocks),
                    kThreads, 0, stream, grad_output, indices, grad_input, sums, planes, in_plane,
                    out_plane, bad_index);
}

template <typename scalar_t>
void launch_max_pool2d_gather(const scalar_t* input, const int64_t* indices, scalar_t* output,
                              int64_t planes, int64_t in_plane, int64_t out_plane,
                              int64_t* bad_index, cudaStream_t stream) {
  const int64_t numel = planes * out_plane;
  if (numel == 0) return;
  LENET_CUDA_LAUNCH(max_pool2d_gather_kernel<scalar_t>, blocks_for(numel), kThreads, 0, stream,
                    input, indices, output, numel, in_plane, out_plane, bad_index);
}

#define INSTANTIATE(T)                                                                        \
  template void launch_max_pool2d<T>(const T*, T*, int64_t*, const Pool2dShape&, cudaStream_t); \
  template void launch_max_pool2d_backward<T>(const T*, const int64_t*, T*, acc_t<T>*, int64_t, \
                                              int64_t, int64_t, int64_t*, cudaStream_t);      \
  template void launch_max_pool2d_gather<T>(const T*, const int64_t*, T*, int64_t, int64_t,   \
                                            int64_t, int64_t*, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(double)
INSTANTIATE(__nv_bfloat16)
INSTANTIATE(__half)

}  // namespace lenet_ext::cuda
