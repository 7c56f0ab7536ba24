// The CUDA runtime as csrc/cuda sees it. Under nvcc it is CUDA itself. In the emulated build
// (LENET_EXT_CUDA_EMULATED, setup.py's LENET_EXT_CUDA=emulated) the same .cu sources are compiled
// as host C++ against HIP-CPU (third_party/hip-cpu), which runs each block on one CPU thread and
// its threads as fibers; this header maps the few CUDA names the kernels use onto it and gives
// warp shuffles CUDA's 32-lane semantics, which HIP-CPU's own 64-wide __shfl does not have.
// Kernels are launched only through LENET_CUDA_LAUNCH: HIP-CPU cannot parse <<<...>>>.
// The two 2-byte storage types are CUDA's __half and __nv_bfloat16; emulated, __half is HIP-CPU's
// and __nv_bfloat16 the struct below.
#pragma once

#if defined(LENET_EXT_CUDA_EMULATED)

#include <hip/hip_runtime.h>  // and hip_fp16.h's __half: a host half with float conversions

#include <cmath>
#include <cstdint>
#include <cstring>

using cudaStream_t = hipStream_t;
using cudaError_t = hipError_t;
using std::isnan;  // HIP-CPU declares device math only in std

// HIP-CPU's __global__ and __device__ ask GCC for SIMD clones, which it cannot make for struct
// arguments (a warning per kernel); the clones would not make a test run faster.
#undef __global__
#define __global__ __attribute__((flatten))
#undef __device__
#define __device__

#define LENET_CUDA_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  hipLaunchKernelGGL(kernel, grid, block, shared_bytes, stream, __VA_ARGS__)

namespace lenet_ext::cuda::emulated {

// The thread's index in its block as CUDA numbers it (x fastest); HIP-CPU numbers its fibers z
// fastest, so its lane arithmetic cannot stand in for CUDA's in a 2-D or 3-D block.
inline unsigned int linear_thread_index() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

// A warp shuffle: each thread publishes `value` and returns the one published by lane
// source(lane) of its own 32-thread warp. The exchange goes through a per-block slot array between
// two block-wide barriers (HIP-CPU has no warp-wide one), so every thread of the block must make
// the same sequence of shuffles, a stricter rule than CUDA's.
template <typename T, typename Source>
T shuffle(T value, Source source) {
  thread_local T slots[1024];  // one OS thread runs one block at a time: per-block storage
  const unsigned int index = linear_thread_index();
  const unsigned int lane = index % 32;
  slots[index] = value;
  __syncthreads();
  const T result = slots[index - lane + source(lane)];
  __syncthreads();  // before the slots are overwritten by the next shuffle
  return result;
}

}  // namespace lenet_ext::cuda::emulated

// CUDA's shuffles for a full warp (the mask is ignored: every lane takes part). __shfl_sync: lane
// L reads lane (L / width) * width + src_lane % width. __shfl_xor_sync: lane L reads lane
// L ^ lane_mask, or keeps its own value if that lies in a later width-segment.
template <typename T>
T __shfl_sync(unsigned int /*mask*/, T value, int src_lane, int width = 32) {
  const unsigned int segment = static_cast<unsigned int>(width);
  const unsigned int offset = static_cast<unsigned int>(src_lane) & (segment - 1);
  return lenet_ext::cuda::emulated::shuffle(
      value, [=](unsigned int lane) { return lane / segment * segment + offset; });
}

template <typename T>
T __shfl_xor_sync(unsigned int /*mask*/, T value, int lane_mask, int width = 32) {
  const unsigned int segment = static_cast<unsigned int>(width);
  return lenet_ext::cuda::emulated::shuffle(value, [=](unsigned int lane) {
    const unsigned int source = (lane ^ static_cast<unsigned int>(lane_mask)) & 31u;
    return source / segment > lane / segment ? lane : source;
  });
}

// A block-wide barrier: correct wherever CUDA's warp-wide one is, given the rule above.
inline void __syncwarp(unsigned int /*mask*/ = 0xffffffffu) { __syncthreads(); }

// bfloat16 (HIP-CPU has none): float's upper 16 bits. Widening is exact; narrowing rounds to
// nearest even and makes any NaN the quiet NaN 0x7FC0, bit for bit as c10::BFloat16 does, so a
// result is what PyTorch's own rounding of the same float would give. No arithmetic: kernels
// widen to float (an operator applied to two of them acts on their floats).
struct __nv_bfloat16 {
  uint16_t bits = 0;

  __nv_bfloat16() = default;
  explicit __nv_bfloat16(float value) {
    uint32_t word;
    std::memcpy(&word, &value, sizeof word);
    bits = std::isnan(value) ? uint16_t{0x7FC0}
                             : static_cast<uint16_t>((word + 0x7FFFu + ((word >> 16) & 1u)) >> 16);
  }
  operator float() const {
    const uint32_t word = uint32_t{bits} << 16;
    float value;
    std::memcpy(&value, &word, sizeof value);
    return value;
  }
};

#else

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define LENET_CUDA_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  kernel<<<grid, block, shared_bytes, stream>>>(__VA_ARGS__)

#endif
