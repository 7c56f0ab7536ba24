// relu on CUDA: one grid-stride pass, one element per thread per step, out = x < 0 ? 0 : x;
// backward passes grad where the saved result is > 0. Each element is read and written once
// (coalesced), so both run at memory bandwidth; selects, not branches, and NaN compares false so
// it propagates as in torch. No reduction: bitwise deterministic. Compares and copies only, in
// the storage type (bfloat16 and half compare exactly, as their floats would): exact in every type.
#include "common.cuh"
#include "kernels.h"

namespace lenet_ext::cuda {
namespace {

template <typename scalar_t>
__global__ void relu_kernel(const scalar_t* input, scalar_t* output, int64_t numel) {
  LENET_CUDA_KERNEL_LOOP(i, numel) {
    const scalar_t x = input[i];
    output[i] = x < scalar_t(0) ? scalar_t(0) : x;
  }
}

template <typename scalar_t>
__global__ void relu_backward_kernel(const scalar_t* grad_output, const scalar_t* result,
                                     scalar_t* grad_input, int64_t numel) {
  LENET_CUDA_KERNEL_LOOP(i, numel) {
    // result <= 0 (not > 0) so that a NaN result passes its gradient through, as torch's does
    grad_input[i] = result[i] <= scalar_t(0) ? scalar_t(0) : grad_output[i];
  }
}

}  // namespace

template <typename scalar_t>
void launch_relu(const scalar_t* input, scalar_t* output, int64_t numel, cudaStream_t stream) {
  if (numel == 0) return;
  LENET_CUDA_LAUNCH(relu_kernel<scalar_t>, blocks_for(numel), kThreads, 0, stream, input, output,
                    numel);
}

template <typename scalar_t>
void launch_relu_backward(const scalar_t* grad_output, const scalar_t* result, scalar_t* grad_input,
                          int64_t numel, cudaStream_t stream) {
  if (numel == 0) return;
  LENET_CUDA_LAUNCH(relu_backward_kernel<scalar_t>, blocks_for(numel), kThreads, 0, stream,
                    grad_output, result, grad_input, numel);
}

#define INSTANTIATE(T)                                                                 \
  template void launch_relu<T>(const T*, T*, int64_t, cudaStream_t);                   \
  template void launch_relu_backward<T>(const T*, const T*, T*, int64_t, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(double)
INSTANTIATE(__nv_bfloat16)
INSTANTIATE(__half)

}  // namespace lenet_ext::cuda
