// linear on CUDA: forward and both backward products are one tiled GEMM,
// C[m, n] = sum_k A(m, k) * B(k, n), with operands read through (row, column) strides so that no
// transpose is materialised. A 16x16 block computes a 16x16 tile of C, one element per thread, from
// tiles of A and B staged in shared memory (a global element is read m/16 or n/16 times, not m or
// n) and loaded along their contiguous dimension so loads coalesce. One thread sums each C element
// over k in order (bias first) and grad_bias is a fixed-tree column sum: bitwise the same every
// run. The tiles hold acc_t (float for bfloat16 and half, widened once at the load), so every
// product and sum is in acc_t and each C element is rounded once, at its store.
#include "common.cuh"
#include "kernels.h"

namespace lenet_ext::cuda {
namespace {

constexpr int kTile = 16;

// A strided view of a matrix: element (row, col) is at data[row * row_stride + col * col_stride].
template <typename scalar_t>
struct MatrixView {
  const scalar_t* data;
  int64_t rows, cols, row_stride, col_stride;
};

// tile[r][c] = view(row0 + r, col0 + c) widened to acc_t, zero outside the matrix. Consecutive
// threads (x) walk the view's contiguous dimension, so a warp reads consecutive addresses; the +1
// column of padding keeps the transposed shared-memory writes free of bank conflicts.
template <typename scalar_t>
__device__ void load_tile(acc_t<scalar_t> (&tile)[kTile][kTile + 1],
                          const MatrixView<scalar_t>& view, int64_t row0, int64_t col0) {
  using acc = acc_t<scalar_t>;
  const bool walk_cols = view.col_stride == 1;
  const int r = walk_cols ? threadIdx.y : threadIdx.x;
  const int c = walk_cols ? threadIdx.x : threadIdx.y;
  const int64_t row = row0 + r, col = col0 + c;
  tile[r][c] = row < view.rows && col < view.cols
                   ? static_cast<acc>(view.data[row * view.row_stride + col * view.col_stride])
                   : acc(0);
}

// c[m, n] (contiguous) = a[m, k] * b[k, n] (+ bias[n]); a.rows = m, a.cols = b.rows = k,
// b.cols = n. One block per 16x16 tile of c, numbered along rows of tiles.
template <typename scalar_t>
__global__ void __launch_bounds__(kTile * kTile)
    gemm_kernel(MatrixView<scalar_t> a, MatrixView<scalar_t> b, const scalar_t* bias,
                scalar_t* c) {
  using acc = acc_t<scalar_t>;
  __shared__ acc a_tile[kTile][kTile + 1];
  __shared__ acc b_tile[kTile][kTile + 1];
  const int64_t col_tiles = (b.cols + kTile - 1) / kTile;
  const int64_t row0 = int64_t{blockIdx.x} / col_tiles * kTile;
  const int64_t col0 = int64_t{blockIdx.x} % col_tiles * kTile;
  const int64_t row = row0 + threadIdx.y, col = col0 + threadIdx.x;
  // the bias first, then k in order: the CPU GEMM's summation order
  acc sum = bias != nullptr && col < b.cols ? static_cast<acc>(bias[col]) : acc(0);
  for (int64_t k0 = 0; k0 < a.cols; k0 += kTile) {
    load_tile(a_tile, a, row0, k0);
    load_tile(b_tile, b, k0, col0);
    __syncthreads();
    // past the end of k both tiles hold zeros, which add exact zeros
#pragma unroll
    for (int k = 0; k < kTile; ++k) sum += a_tile[threadIdx.y][k] * b_tile[k][threadIdx.x];
    __syncthreads();
  }
  if (row < a.rows && col < b.cols) c[row * b.cols + col] = static_cast<scalar_t>(sum);
}

template <typename scalar_t>
void launch_gemm(const MatrixView<scalar_t>& a, const MatrixView<scalar_t>& b,
                 const scalar_t* bias, scalar_t* c, cudaStream_t stream) {
  if (a.rows == 0 || b.cols == 0) return;
  const int64_t tiles = ((a.rows + kTile - 1) / kTile) * ((b.cols + kTile - 1) / kTile);
  LENET_CUDA_LAUNCH(gemm_kernel<scalar_t>, static_cast<unsigned int>(tiles), dim3(kTile, kTile), 0,
                    stream, a, b, bias, c);
}

}  // namespace

template <typename scalar_t>
void launch_linear(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                   scalar_t* output, int64_t rows, int64_t in_features, int64_t out_features,
                   cudaStream_t stream) {
  // output[rows, out] = input[rows, in] * weight^T, weight^T read as a [in, out] view
  launch_gemm<scalar_t>({input, rows, in_features, in_features, 1},
                        {weight, in_features, out_features, 1, in_features}, bias, output, stream);
}

template <typename scalar_t>
void launch_linear_grad_input(const scalar_t* grad_output, const scalar_t* weight,
                              scalar_t* grad_input, int64_t rows, int64_t in_features,
                              int64_t out_features, cudaStream_t stream) {
  // grad_input[rows, in] = grad_output[rows, out] * weight[out, in]
  launch_gemm<scalar_t>({grad_output, rows, out_features, out_features, 1},
                        {weight, out_features, in_features, in_features, 1}, nullptr, grad_input,
                        stream);
}

template <typename scalar_t>
void launch_linear_grad_weight(const scalar_t* grad_output, const scalar_t* input,
                               scalar_t* grad_weight, int64_t rows, int64_t in_features,
                               int64_t out_features, cudaStream_t stream) {
  // grad_weight[out, in] = grad_output^T * input[rows, in], grad_output^T read as [out, rows]
  launch_gemm<scalar_t>({grad_output, out_features, rows, 1, out_features},
                        {input, rows, in_features, in_features, 1}, nullptr, grad_weight, stream);
}

template <typename scalar_t>
void launch_linear_grad_bias(const scalar_t* grad_output, scalar_t* grad_bias, int64_t rows,
                             int64_t out_features, cudaStream_t stream) {
  launch_channel_sum(grad_output, grad_bias, rows, out_features, int64_t{1}, stream);
}

#define INSTANTIATE(T)                                                                             \
  template void launch_linear<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t,      \
                                 cudaStream_t);                                                    \
  template void launch_linear_grad_input<T>(const T*, const T*, T*, int64_t, int64_t, int64_t,     \
                                            cudaStream_t);                                         \
  template void launch_linear_grad_weight<T>(const T*, const T*, T*, int64_t, int64_t, int64_t,    \
                                             cudaStream_t);                                        \
  template void launch_linear_grad_bias<T>(const T*, T*, int64_t, int64_t, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(double)
INSTANTIATE(__nv_bfloat16)
INSTANTIATE(__half)

}  // namespace lenet_ext::cuda
