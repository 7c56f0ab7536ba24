// C[M,N] = A[M,K] * B[K,N] (+ bias[N]), row-major with leading dimensions: the one matrix product
// behind linear (forward and both backward products) and any op that lowers to a GEMM.
// A register tile of kRows x (2 vectors) of C accumulates over k: each B row segment loaded from L1
// serves kRows rows of A (a broadcast each), so the loop is bound by FMA throughput, not loads.
// GCC vector extensions (not intrinsics) keep it portable: the same code is AVX-512 with
// -march=native and SSE without. Each C element is summed over k in order by one thread, so
// results are bitwise the same for any thread count.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace lenet_ext {
namespace gemm_detail {

template <typename scalar_t>
struct Vec {
  static constexpr int kLanes = 64 / sizeof(scalar_t);  // one 512-bit register
  typedef scalar_t type __attribute__((vector_size(64)));
  static type load(const scalar_t* p) {
    type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(scalar_t* p, const type& v) { std::memcpy(p, &v, sizeof(v)); }
};

// Full-width tile: ROWS rows x 2 vectors of columns, all bounds known at compile time so the
// accumulators live in registers.
template <typename scalar_t, int ROWS>
inline void tile(const scalar_t* a, int64_t lda, const scalar_t* b, int64_t ldb,
                 const scalar_t* bias, scalar_t* c, int64_t ldc, int64_t k_size) {
  using V = Vec<scalar_t>;
  constexpr int L = V::kLanes;
  typename V::type acc[ROWS][2];
  const typename V::type init0 = bias ? V::load(bias) : typename V::type{};
  const typename V::type init1 = bias ? V::load(bias + L) : typename V::type{};
  for (int r = 0; r < ROWS; ++r) acc[r][0] = init0, acc[r][1] = init1;
  for (int64_t k = 0; k < k_size; ++k) {
    const typename V::type b0 = V::load(b + k * ldb), b1 = V::load(b + k * ldb + L);
    for (int r = 0; r < ROWS; ++r) {
      const scalar_t a_rk = a[r * lda + k];
      acc[r][0] += a_rk * b0;
      acc[r][1] += a_rk * b1;
    }
  }
  for (int r = 0; r < ROWS; ++r) V::store(c + r * ldc, acc[r][0]), V::store(c + r * ldc + L, acc[r][1]);
}

// Column remainder narrower than a full tile: plain loops, the compiler vectorises what it can.
template <typename scalar_t>
inline void edge(const scalar_t* a, int64_t lda, const scalar_t* b, int64_t ldb,
                 const scalar_t* bias, scalar_t* c, int64_t ldc, int64_t rows, int64_t cols,
                 int64_t k_size) {
  constexpr int kMaxCols = 2 * Vec<scalar_t>::kLanes;
  for (int64_t r = 0; r < rows; ++r) {
    scalar_t acc[kMaxCols];
    for (int64_t j = 0; j < cols; ++j) acc[j] = bias ? bias[j] : scalar_t(0);
    for (int64_t k = 0; k < k_size; ++k) {
      const scalar_t a_rk = a[r * lda + k];
      for (int64_t j = 0; j < cols; ++j) acc[j] += a_rk * b[k * ldb + j];
    }
    std::copy(acc, acc + cols, c + r * ldc);
  }
}

template <typename scalar_t, int ROWS>
inline void row_block(const scalar_t* a, const scalar_t* b, const scalar_t* bias, scalar_t* c,
                      int64_t k_size, int64_t n_size) {
  constexpr int64_t kCols = 2 * Vec<scalar_t>::kLanes;
  int64_t n0 = 0;
  for (; n0 + kCols <= n_size; n0 += kCols)
    tile<scalar_t, ROWS>(a, k_size, b + n0, n_size, bias ? bias + n0 : nullptr, c + n0, n_size,
                         k_size);
  if (n0 < n_size)
    edge(a, k_size, b + n0, n_size, bias ? bias + n0 : nullptr, c + n0, n_size, ROWS,
         n_size - n0, k_size);
}

}  // namespace gemm_detail

template <typename scalar_t>
void gemm(const scalar_t* a, const scalar_t* b, const scalar_t* bias, scalar_t* c, int64_t m_size,
          int64_t k_size, int64_t n_size) {
  using namespace gemm_detail;
  constexpr int64_t kRows = 6;  // 6 rows x 2 vectors = 12 accumulator registers + 2 for B
  const int64_t row_blocks = (m_size + kRows - 1) / kRows;
  // enough rows per task that a task is worth ~64k multiply-adds
  const int64_t grain =
      std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, kRows * k_size * n_size));
  at::parallel_for(0, row_blocks, grain, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t m0 = block * kRows;
      const scalar_t* a_rows = a + m0 * k_size;
      scalar_t* c_rows = c + m0 * n_size;
      switch (std::min(kRows, m_size - m0)) {  // the row remainder gets its own compiled tile
        case 6: row_block<scalar_t, 6>(a_rows, b, bias, c_rows, k_size, n_size); break;
        case 5: row_block<scalar_t, 5>(a_rows, b, bias, c_rows, k_size, n_size); break;
        case 4: row_block<scalar_t, 4>(a_rows, b, bias, c_rows, k_size, n_size); break;
        case 3: row_block<scalar_t, 3>(a_rows, b, bias, c_rows, k_size, n_size); break;
        case 2: row_block<scalar_t, 2>(a_rows, b, bias, c_rows, k_size, n_size); break;
        default: row_block<scalar_t, 1>(a_rows, b, bias, c_rows, k_size, n_size); break;
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
