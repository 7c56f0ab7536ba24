// The matrix products behind linear (and any op that lowers to one), in two forms:
// - gemm: C[M,N] = A[M,K] * B[K,N] (+ bias[N]), B row-major, A with any row and k strides (so A
//   may be a transpose read as stored). A register tile of ROWS x VECS vectors of C accumulates
//   over k: each B row segment loaded serves ROWS rows of A (a broadcast each), so the loop is
//   bound by FMA throughput. B is read as panels two vectors wide: a plain matrix's last,
//   narrower panel is a zero-padded copy, and pack_transposed builds a W^T's panels in one pass
//   (gemm_nt_packed: each thread packs those it uses), so the tile never reads past a row and
//   stores only the columns that exist.
// - gemm_nt: C[M,N] = A[M,K] * B[N,K]^T (+ bias[N]), both operands contiguous along k (linear's
//   forward: input times weight as stored). No transpose, no packing: a tile of ROWS x COLS dot
//   products accumulates kLanes-wide partial sums along k, and one butterfly folds the kLanes
//   accumulators into one vector of kLanes results. ROWS = 1 is the GEMV of batch 1.
// simd.h's vectors (GCC vector extensions) keep both portable: AVX-512 native, SSE without.
// Each C element is summed in an order fixed by the shapes alone, by one thread, so results are
// bitwise the same for any thread count.
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

// Size of pack_transposed's result: ceil(n_size / kCols) panels of k_size x kCols.
template <typename scalar_t>
int64_t packed_size(int64_t k_size, int64_t n_size) {
  constexpr int64_t kCols = 2 * simd::Vec<scalar_t>::kLanes;
  return (n_size + kCols - 1) / kCols * kCols * k_size;
}

// C[M,N] = A[M,K] * B[K,N] (+ bias[N]), all contiguous row-major.
template <typename scalar_t>
void gemm(const scalar_t* a, const scalar_t* b, const scalar_t* bias, scalar_t* c, int64_t m_size,
          int64_t k_size, int64_t n_size) {
  gemm(a, k_size, 1, b, n_size, bias, c, n_size, m_size, k_size, n_size);
}

// ---- gemm_nt -----------------------------------------------------------------------------------

namespace gemm_detail {

// ROWS x COLS dot products (ROWS * COLS = kLanes) of rows of A and rows of B over k_size >= kLanes
// elements, kLanes at a time; the last, partial step re-reads the final kLanes elements and masks
// off the lanes already counted (masking both operands, so an inf there cannot make a NaN).
// Rows past a_rows / b_rows repeat the last row and are not stored.
template <typename scalar_t, int ROWS, int COLS>
inline void dot_tile(const scalar_t* a, const scalar_t* b, const scalar_t* bias, scalar_t* c,
                     int64_t ldc, int64_t a_rows, int64_t b_rows, int64_t k_size) {
  using V = Vec<scalar_t>;
  constexpr int L = V::kLanes;
  static_assert(ROWS * COLS == L);
  const scalar_t* a_row[ROWS];
  const scalar_t* b_row[COLS];
  for (int r = 0; r < ROWS; ++r) a_row[r] = a + std::min<int64_t>(r, a_rows - 1) * k_size;
  for (int j = 0; j < COLS; ++j) b_row[j] = b + std::min<int64_t>(j, b_rows - 1) * k_size;
  typename V::type acc[L] = {};
  for (int64_t k = 0; k < k_size; k += L) {
    // the last step starts at k_size - L and masks off the lanes the previous step counted
    const int64_t start = std::min(k, k_size - L);
    const typename V::index_type counted =
        V::lane_index() < static_cast<typename V::index_t>(k - start);
    const auto load = [&](const scalar_t* row) {
      return simd::pin(counted ? typename V::type{} : V::load(row + start));
    };
    typename V::type a_k[ROWS];
    for (int r = 0; r < ROWS; ++r) a_k[r] = load(a_row[r]);
    for (int j = 0; j < COLS; ++j) {
      const typename V::type b_k = load(b_row[j]);
      for (int r = 0; r < ROWS; ++r) acc[r * COLS + j] += a_k[r] * b_k;
    }
  }
  typename V::type sums = simd::fold_all<scalar_t>(acc);
  if (bias) {
    typename V::type bias_lanes;
    for (int lane = 0; lane < L; ++lane)
      bias_lanes[lane] = bias[std::min<int64_t>(lane % COLS, b_rows - 1)];
    sums += bias_lanes;
  }
  if (a_rows >= ROWS && b_rows >= COLS) {
    for (int r = 0; r < ROWS; ++r) std::memcpy(c + r * ldc, &sums[r * COLS], sizeof(scalar_t) * COLS);
  } else {
    for (int r = 0; r < std::min<int64_t>(ROWS, a_rows); ++r)
      for (int j = 0; j < std::min<int64_t>(COLS, b_rows); ++j) c[r * ldc + j] = sums[r * COLS + j];
  }
}

}  // namespace gemm_detail

// Needs k_size >= kLanes (a shorter k is a plain gemm's job).
template <typename scalar_t>
void gemm_nt(const scalar_t* a, const scalar_t* b, const scalar_t* bias, scalar_t* c,
             int64_t m_size, int64_t k_size, int64_t n_size) {
  using namespace gemm_detail;
  constexpr int L = Vec<scalar_t>::kLanes;
  // full blocks of kRows rows use kRows x kCols tiles; the rows left over (all of them at batch
  // 1) are GEMVs, 1 x kLanes tiles, so no lanes are wasted on rows that do not exist
  constexpr int kRows = 4, kCols = L / kRows;
  const int64_t full_rows = m_size / kRows * kRows;
  const int64_t tiles_n = (n_size + kCols - 1) / kCols, gemv_n = (n_size + L - 1) / L;
  const int64_t tasks = full_rows / kRows * tiles_n + (m_size - full_rows) * gemv_n;
  at::parallel_for(0, tasks, grain(L * k_size, kGemmTask), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      if (task < full_rows / kRows * tiles_n) {
        const int64_t m0 = task / tiles_n * kRows, n0 = task % tiles_n * kCols;
        dot_tile<scalar_t, kRows, kCols>(a + m0 * k_size, b + n0 * k_size,
                                         bias ? bias + n0 : nullptr, c + m0 * n_size + n0, n_size,
                                         kRows, n_size - n0, k_size);
      } else {
        const int64_t rest = task - full_rows / kRows * tiles_n;
        const int64_t m = full_rows + rest / gemv_n, n0 = rest % gemv_n * L;
        dot_tile<scalar_t, 1, L>(a + m * k_size, b + n0 * k_size, bias ? bias + n0 : nullptr,
                                 c + m * n_size + n0, n_size, 1, n_size - n0, k_size);
      }
    }
  });
}

// B = W^T for W [n_size, k_size] as gemm_panels' panels: panels[p][k][j] = W[p * kCols + j][k],
// zero past n_size. Transposing and padding in one pass, kLanes x kLanes blocks in registers.
template <typename scalar_t>
void pack_transposed(const scalar_t* w, scalar_t* panels, int64_t n_size, int64_t k_size) {
  using V = simd::Vec<scalar_t>;
  constexpr int64_t L = V::kLanes, kCols = 2 * L;
  const int64_t full_k = k_size / L * L;
  for (int64_t n0 = 0; n0 < n_size; n0 += L) {  // L rows of W -> L columns of one panel
    scalar_t* out = panels + n0 / kCols * k_size * kCols + n0 % kCols;
    const int64_t rows = std::min(L, n_size - n0);
    for (int64_t k0 = 0; k0 < full_k; k0 += L) {
      typename V::type block[L];
      for (int r = 0; r < L; ++r)
        block[r] = r < rows ? V::load(w + (n0 + r) * k_size + k0) : typename V::type{};
      simd::transpose_block<scalar_t>(block);
      for (int r = 0; r < L; ++r) V::store(out + (k0 + r) * kCols, block[r]);
    }
    for (int64_t k = full_k; k < k_size; ++k)
      for (int64_t r = 0; r < L; ++r) out[k * kCols + r] = r < rows ? w[(n0 + r) * k_size + k] : 0;
  }
  // a last panel with no more than L columns: its second half is all padding
  if (const int64_t last = n_size % kCols; last > 0 && last <= L)
    for (int64_t k = 0; k < k_size; ++k)
      std::fill_n(panels + (n_size / kCols * k_size + k) * kCols + L, L, scalar_t(0));
}

// C[M,N] = A[M,K] * B[N,K]^T (+ bias[N]) by gemm's broadcast tiles, over B^T packed into panels.
// The tasks are (panel, chunk of rows) pairs, panel-major, with as many row chunks as make them
// divide evenly over the threads; each thread packs just the panels of its own tasks, into a
// buffer of its own, and starts on them at once (a panel two threads share is packed by both).
// One pack of all of B before a row-block split would cost fc1's forward at batch 64 ~6 µs of
// ~45 µs (the pack gains nothing from a second thread), plus a second fork and join.
template <typename scalar_t>
void gemm_nt_packed(const scalar_t* a, const scalar_t* b, const scalar_t* bias, scalar_t* c,
                    int64_t m_size, int64_t k_size, int64_t n_size) {
  using gemm_detail::kRows;
  constexpr int64_t kCols = 2 * simd::Vec<scalar_t>::kLanes;
  const int64_t panels = (n_size + kCols - 1) / kCols, row_blocks = (m_size + kRows - 1) / kRows;
  if (panels == 0 || row_blocks == 0) return;
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = std::min(row_blocks, threads / std::gcd(panels, threads));
  const int64_t chunk_rows = (row_blocks + chunks - 1) / chunks * kRows;
  const int64_t task_work = chunk_rows * std::max<int64_t>(1, k_size) * kCols;  // multiply-adds
  at::parallel_for(0, panels * chunks, grain(task_work, kPackedGemmTask), [&](int64_t begin, int64_t end) {
    const int64_t first = begin / chunks, n0 = first * kCols;
    const int64_t n1 = std::min(n_size, ((end - 1) / chunks + 1) * kCols);
    // not zeroed: pack_transposed writes it all
    const std::unique_ptr<scalar_t[]> own(new scalar_t[packed_size<scalar_t>(k_size, n1 - n0)]);
    pack_transposed(b + n0 * k_size, own.get(), n1 - n0, k_size);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t col = task / chunks * kCols, m0 = task % chunks * chunk_rows;
      if (m0 >= m_size) continue;
      const scalar_t* panel = own.get() + (col - n0) * k_size;
      gemm_detail::gemm_rows(a + m0 * k_size, k_size, 1, panel, k_size * kCols, kCols, panel,
                             bias ? bias + col : nullptr, c + m0 * n_size + col, n_size,
                             std::min(chunk_rows, m_size - m0), k_size,
                             std::min(kCols, n_size - col));
    }
  });
}

}  // namespace lenet_ext::cpu
