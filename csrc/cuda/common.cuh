// Launch geometry and the one block reduction shared by the .cu files (no PyTorch header).
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels.h"
#include "runtime.h"

namespace lenet_ext::cuda {

constexpr int kThreads = 256;  // threads per block of every 1-D kernel; at most 32 warps (block_sum)

// Blocks for a grid-stride loop over `work` items: one item per thread up to a cap beyond which
// more blocks only add scheduling cost. Never 0: launchers skip empty work before asking.
inline unsigned int blocks_for(int64_t work) {
  constexpr int64_t kMaxBlocks = int64_t{1} << 20;
  return static_cast<unsigned int>(std::min((work + kThreads - 1) / kThreads, kMaxBlocks));
}

// Grid-stride loop index in 64 bits: numel may pass 2^31.
#define LENET_CUDA_KERNEL_LOOP(i, n)                                                    \
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < (n);             \
       i += int64_t{gridDim.x} * blockDim.x)

constexpr int kWarp = 32;
constexpr int kWarps = kThreads / kWarp;
constexpr unsigned int kAllLanes = 0xffffffffu;
static_assert(kThreads % kWarp == 0 && kWarps <= kWarp, "block_sum: whole warps, one total a lane");

// Sum of `value` over the 32 lanes of the warp, returned to every lane: a butterfly of xor
// shuffles. Lane i adds lane i ^ m's partial to its own and lane i ^ m the same two the other way
// round, which rounds to the same bits, so all lanes end with one total, in a fixed order.
template <typename scalar_t>
__device__ scalar_t warp_sum(scalar_t value) {
  for (int mask = kWarp / 2; mask > 0; mask /= 2) value += __shfl_xor_sync(kAllLanes, value, mask);
  return value;
}

// Sum of `value` over the kThreads threads of the block, returned to every thread: each warp sums
// its lanes, then every warp sums the kWarps warp totals. A fixed tree, so the result is bitwise
// the same every run. Every thread must call it (the shuffles need the whole warp).
template <typename scalar_t>
__device__ scalar_t block_sum(scalar_t value) {
  __shared__ scalar_t warp_totals[kWarps];
  const int lane = threadIdx.x % kWarp;
  value = warp_sum(value);
  if (lane == 0) warp_totals[threadIdx.x / kWarp] = value;
  __syncthreads();
  const scalar_t total = warp_sum(lane < kWarps ? warp_totals[lane] : scalar_t(0));
  __syncthreads();  // before a next call overwrites warp_totals
  return total;
}

// sums[c] = sum over n < batch, p < plane of values[(n * channels + c) * plane + p]: the bias
// gradient of linear (plane 1) and conv2d. One block per channel; each thread sums a fixed
// strided subset in order, then block_sum, all in acc_t, rounded once at the store:
// deterministic, no atomics.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    channel_sum_kernel(const scalar_t* values, scalar_t* sums, int64_t batch, int64_t channels,
                       int64_t plane) {
  using acc = acc_t<scalar_t>;
  const int64_t count = batch * plane;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    acc sum = 0;
    for (int64_t r = threadIdx.x; r < count; r += kThreads) {
      const int64_t n = r / plane, p = r % plane;
      sum += static_cast<acc>(values[(n * channels + c) * plane + p]);
    }
    const acc total = block_sum(sum);
    if (threadIdx.x == 0) sums[c] = static_cast<scalar_t>(total);
  }
}

template <typename scalar_t>
void launch_channel_sum(const scalar_t* values, scalar_t* sums, int64_t batch, int64_t channels,
                        int64_t plane, cudaStream_t stream) {
  if (channels == 0) return;
  const auto blocks = static_cast<unsigned int>(std::min<int64_t>(channels, int64_t{1} << 20));
  LENET_CUDA_LAUNCH(channel_sum_kernel<scalar_t>, blocks, kThreads, 0, stream, values, sums, batch,
                    channels, plane);
}

}  // namespace lenet_ext::cuda
