// C[M,N] = A[M,K] * B[K,N] (+ bias[N]), all row-major and contiguous: the one matrix product behind
// linear (forward and both backward products) and any op that lowers to a GEMM.
// Register tiles of 4 rows x 64 columns of C accumulate over k: each B row segment loaded from L1
// serves 4 rows of A, and the inner loop runs along contiguous columns, so it vectorises without
// reassociating a sum. Each C element is summed over k in order by one thread: results are bitwise
// the same for any thread count.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace lenet_ext {

template <typename scalar_t>
void gemm(const scalar_t* a, const scalar_t* b, const scalar_t* bias, scalar_t* c, int64_t m_size,
          int64_t k_size, int64_t n_size) {
  constexpr int64_t kRows = 4, kCols = 64;
  const int64_t row_blocks = (m_size + kRows - 1) / kRows;
  // enough rows per task that a task is worth ~64k multiply-adds
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, kRows * k_size * n_size));
  at::parallel_for(0, row_blocks, grain, [&](int64_t block_begin, int64_t block_end) {
    scalar_t acc[kRows][kCols];
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t m0 = block * kRows;
      const int64_t rows = std::min(kRows, m_size - m0);
      for (int64_t n0 = 0; n0 < n_size; n0 += kCols) {
        const int64_t cols = std::min(kCols, n_size - n0);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t j = 0; j < cols; ++j) acc[r][j] = bias ? bias[n0 + j] : scalar_t(0);
        for (int64_t k = 0; k < k_size; ++k) {
          const scalar_t* b_row = b + k * n_size + n0;
          for (int64_t r = 0; r < rows; ++r) {
            const scalar_t a_rk = a[(m0 + r) * k_size + k];
            for (int64_t j = 0; j < cols; ++j) acc[r][j] += a_rk * b_row[j];
          }
        }
        for (int64_t r = 0; r < rows; ++r)
          std::copy(acc[r], acc[r] + cols, c + (m0 + r) * n_size + n0);
      }
    }
  });
}

// out[cols, rows] = in[rows, cols]^T
template <typename scalar_t>
void transpose(const scalar_t* in, scalar_t* out, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) out[j * rows + i] = in[i * cols + j];
}

}  // namespace lenet_ext
