// gemm: C[M,N] = A[M,K] * B[K,N] (+ bias[N]), B row-major, A with any row and k strides (so A may
// be a transpose read as stored): conv2d's im2col and linear's backward, and the tiles of linear's
// packed forward. A register tile of ROWS x VECS vectors of C accumulates over k: each B row
// segment loaded serves ROWS rows of A (a broadcast each), so the loop is bound by FMA throughput.
// B is read as panels two vectors wide: a plain matrix's last, narrower panel is a zero-padded
// copy (linear/packed.cpp builds W^T's panels itself), so the tile never reads past a row and
// stores only the columns that exist. simd.h's vectors keep it portable: AVX-512 native, SSE
// without. Each C element is summed in an order fixed by the shapes alone, by one thread, so
// results are bitwise the same for any thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <type_traits>
#include <vector>

#include "parallel.h"
#include "simd.h"

namespace lenet_ext::cpu {
namespace gemm_detail {

using simd::Vec;

// ---- gemm --------------------------------------------------------------------------------------

// A tile of ROWS rows x VECS vectors of C, all bounds known at compile time so the accumulators
// live in registers; store_cols < VECS * kLanes stores only that many columns.
template <typename scalar_t, int ROWS, int VECS>
inline void tile(const scalar_t* a, int64_t a_row, int64_t a_k, const scalar_t* b, int64_t ldb,
                 const scalar_t* bias, scalar_t* c, int64_t ldc, int64_t k_size,
                 int64_t store_cols) {
  using V = Vec<scalar_t>;
  constexpr int L = V::kLanes;
  typename V::type acc[ROWS][VECS];
  for (int v = 0; v < VECS; ++v) {
    const typename V::type init = bias ? V::load(bias + v * L) : typename V::type{};
    for (int r = 0; r < ROWS; ++r) acc[r][v] = init;
  }
  for (int64_t k = 0; k < k_size; ++k) {
    typename V::type b_k[VECS];
    for (int v = 0; v < VECS; ++v) b_k[v] = V::load(b + k * ldb + v * L);
    for (int r = 0; r < ROWS; ++r) {
      const scalar_t a_rk = a[r * a_row + k * a_k];
      for (int v = 0; v < VECS; ++v) acc[r][v] += a_rk * b_k[v];
    }
  }
  if (store_cols == VECS * L) {
    for (int r = 0; r < ROWS; ++r)
      for (int v = 0; v < VECS; ++v) V::store(c + r * ldc + v * L, acc[r][v]);
  } else {
    for (int r = 0; r < ROWS; ++r) std::memcpy(c + r * ldc, acc[r], store_cols * sizeof(scalar_t));
  }
}

// B is read as column panels of kCols: the panel of columns n0.. starts at b + n0 / kCols *
// panel_step with row stride ldb (a plain matrix: panel_step = kCols; packed panels: panel_step =
// k_size * kCols, ldb = kCols); the narrower last panel is zero-padded to kCols at tail_b (row
// stride kCols), so the tile never reads past a row.
template <typename scalar_t, int ROWS>
inline void row_block(const scalar_t* a, int64_t a_row, int64_t a_k, const scalar_t* b,
                      int64_t panel_step, int64_t ldb, const scalar_t* tail_b,
                      const scalar_t* bias, const scalar_t* tail_bias, scalar_t* c, int64_t ldc,
                      int64_t k_size, int64_t n_size) {
  constexpr int64_t kCols = 2 * Vec<scalar_t>::kLanes;
  int64_t n0 = 0;
  for (; n0 + kCols <= n_size; n0 += kCols)
    tile<scalar_t, ROWS, 2>(a, a_row, a_k, b + n0 / kCols * panel_step, ldb,
                            bias ? bias + n0 : nullptr, c + n0, ldc, k_size, kCols);
  const int64_t tail = n_size - n0;
  if (tail > kCols / 2)
    tile<scalar_t, ROWS, 2>(a, a_row, a_k, tail_b, kCols, tail_bias, c + n0, ldc, k_size, tail);
  else if (tail > 0)
    tile<scalar_t, ROWS, 1>(a, a_row, a_k, tail_b, kCols, tail_bias, c + n0, ldc, k_size, tail);
}

constexpr int64_t kRows = 6;  // 6 rows x 2 vectors = 12 accumulator registers + 2 for B

// All m_size rows of C on the calling thread, a block of kRows rows at a time across all panels.
template <typename scalar_t>
void gemm_rows(const scalar_t* a, int64_t a_row, int64_t a_k, const scalar_t* b,
               int64_t panel_step, int64_t ldb, const scalar_t* tail_b, const scalar_t* bias,
               scalar_t* c, int64_t ldc, int64_t m_size, int64_t k_size, int64_t n_size) {
  constexpr int64_t kCols = 2 * Vec<scalar_t>::kLanes;
  const int64_t tail = n_size % kCols;
  scalar_t tail_bias[kCols] = {};
  if (bias) std::copy(bias + n_size - tail, bias + n_size, tail_bias);
  for (int64_t m0 = 0; m0 < m_size; m0 += kRows) {
    const scalar_t* a_rows = a + m0 * a_row;
    scalar_t* c_rows = c + m0 * ldc;
#define LENET_EXT_ROW_BLOCK(ROWS)                                                          \
  row_block<scalar_t, ROWS>(a_rows, a_row, a_k, b, panel_step, ldb, tail_b, bias,         \
                            bias ? tail_bias : nullptr, c_rows, ldc, k_size, n_size)
    switch (std::min(kRows, m_size - m0)) {  // the row remainder gets its own compiled tile
      case 6: LENET_EXT_ROW_BLOCK(6); break;
      case 5: LENET_EXT_ROW_BLOCK(5); break;
      case 4: LENET_EXT_ROW_BLOCK(4); break;
      case 3: LENET_EXT_ROW_BLOCK(3); break;
      case 2: LENET_EXT_ROW_BLOCK(2); break;
      default: LENET_EXT_ROW_BLOCK(1); break;
    }
#undef LENET_EXT_ROW_BLOCK
  }
}

// gemm_rows with the row blocks split over threads.
template <typename scalar_t>
void gemm_panels(const scalar_t* a, int64_t a_row, int64_t a_k, const scalar_t* b,
                 int64_t panel_step, int64_t ldb, const scalar_t* tail_b, const scalar_t* bias,
                 scalar_t* c, int64_t ldc, int64_t m_size, int64_t k_size, int64_t n_size) {
  const int64_t row_blocks = (m_size + kRows - 1) / kRows;
  at::parallel_for(0, row_blocks, grain(kRows * k_size * n_size, kGemmTask), [&](int64_t begin,
                                                                          int64_t end) {
    const int64_t m0 = begin * kRows;
    gemm_rows(a + m0 * a_row, a_row, a_k, b, panel_step, ldb, tail_b, bias, c + m0 * ldc, ldc,
              std::min(m_size, end * kRows) - m0, k_size, n_size);
  });
}

}  // namespace gemm_detail

// C[m, n] = bias[n] + sum_k a[m * a_row + k * a_k] * b[k * ldb + n], C row-major with ldc.
template <typename scalar_t>
void gemm(const scalar_t* a, int64_t a_row, int64_t a_k, const scalar_t* b, int64_t ldb,
          const scalar_t* bias, scalar_t* c, int64_t ldc, int64_t m_size, int64_t k_size,
          int64_t n_size) {
  constexpr int64_t kCols = 2 * simd::Vec<scalar_t>::kLanes;
  const int64_t tail = n_size % kCols, tail_n0 = n_size - tail;
  std::vector<scalar_t> tail_b(tail ? k_size * kCols : 0);
  for (int64_t k = 0; tail && k < k_size; ++k)
    std::copy(b + k * ldb + tail_n0, b + k * ldb + n_size, tail_b.data() + k * kCols);
  gemm_detail::gemm_panels(a, a_row, a_k, b, kCols, ldb, tail_b.data(), bias, c, ldc, m_size,
                           k_size, n_size);
}

// C[M,N] = A[M,K] * B[K,N] (+ bias[N]), all contiguous row-major.
template <typename scalar_t>
void gemm(const scalar_t* a, const scalar_t* b, const scalar_t* bias, scalar_t* c, int64_t m_size,
          int64_t k_size, int64_t n_size) {
  gemm(a, k_size, 1, b, n_size, bias, c, n_size, m_size, k_size, n_size);
}

}  // namespace lenet_ext::cpu
