// linear's dot algorithm (forward): output = input * weight^T with both operands read as stored,
// contiguous along in_features. No transpose, no packing: a tile of ROWS x COLS dot products
// accumulates kLanes-wide partial sums along k, and one butterfly folds the kLanes accumulators
// into one vector of kLanes results; ROWS = 1 is the GEMV of batch 1. Memory: each tile reads
// ROWS input rows and COLS weight rows once; weight is re-read once per block of 4 rows, from
// L2: the row blocks of a column tile run one after another. Each output is summed by one thread
// in a fixed order.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "../parallel.h"
#include "../simd.h"
#include "algorithms.h"

namespace lenet_ext::cpu::linear {
namespace {

using simd::Vec;

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

// Needs k_size >= kLanes (a shorter k is a plain gemm's job).
template <typename scalar_t>
void gemm_nt(const scalar_t* a, const scalar_t* b, const scalar_t* bias, scalar_t* c,
             int64_t m_size, int64_t k_size, int64_t n_size) {
  constexpr int L = Vec<scalar_t>::kLanes;
  // full blocks of kRows rows use kRows x kCols tiles; the rows left over (all of them at batch
  // 1) are GEMVs, 1 x kLanes tiles, so no lanes are wasted on rows that do not exist
  constexpr int kRows = 4, kCols = L / kRows;
  const int64_t full_rows = m_size / kRows * kRows, tiles_m = full_rows / kRows;
  const int64_t tiles_n = (n_size + kCols - 1) / kCols, gemv_n = (n_size + L - 1) / L;
  const int64_t tasks = tiles_m * tiles_n + (m_size - full_rows) * gemv_n;
  // GEMV tasks stream weight rows once: worth a thread from far less work than cached tiles
  const int64_t task_work = full_rows ? kDotTask : kStreamedTask;
  at::parallel_for(0, tasks, grain(L * k_size, task_work), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      if (task < tiles_m * tiles_n) {
        // the row blocks of one column tile run back to back, so its weight rows are read from
        // memory once and from L2 after
        const int64_t m0 = task % tiles_m * kRows, n0 = task / tiles_m * kCols;
        dot_tile<scalar_t, kRows, kCols>(a + m0 * k_size, b + n0 * k_size,
                                         bias ? bias + n0 : nullptr, c + m0 * n_size + n0, n_size,
                                         kRows, n_size - n0, k_size);
      } else {
        const int64_t rest = task - tiles_m * tiles_n;
        const int64_t m = full_rows + rest / gemv_n, n0 = rest % gemv_n * L;
        dot_tile<scalar_t, 1, L>(a + m * k_size, b + n0 * k_size, bias ? bias + n0 : nullptr,
                                 c + m * n_size + n0, n_size, 1, n_size - n0, k_size);
      }
    }
  });
}

}  // namespace

template <typename scalar_t>
void dot_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                 scalar_t* output, const LinearShape& s) {
  gemm_nt(input, weight, bias, output, s.rows, s.in_features, s.out_features);
}

LENET_EXT_LINEAR_FORWARD(dot_forward)

}  // namespace lenet_ext::cpu::linear
