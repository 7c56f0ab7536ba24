// linear's packed algorithm (forward): output = input * weight^T by gemm.h's broadcast tiles over
// weight^T, which each thread packs into gemm's two-vector panels for just the panels of its own
// tasks (transposing and zero-padding in one pass, kLanes x kLanes blocks in registers). The
// tiles need no per-tile fold, so from enough rows they beat the dot algorithm despite the pack.
// Memory: one pass over weight to pack (per thread that shares a panel), then input streams
// through the tiles once per panel. Each output is summed by one thread in a fixed order.
#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <numeric>

#include "../gemm.h"
#include "../parallel.h"
#include "../simd.h"
#include "algorithms.h"

namespace lenet_ext::cpu::linear {
namespace {

// Size of pack_transposed's result: ceil(n_size / kCols) panels of k_size x kCols.
template <typename scalar_t>
int64_t packed_size(int64_t k_size, int64_t n_size) {
  constexpr int64_t kCols = 2 * simd::Vec<scalar_t>::kLanes;
  return (n_size + kCols - 1) / kCols * kCols * k_size;
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
// One pack of all of B before a row-block split would run on one thread (the pack gains nothing
// from a second), plus a second fork and join.
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

}  // namespace

template <typename scalar_t>
void packed_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                    scalar_t* output, const LinearShape& s) {
  gemm_nt_packed(input, weight, bias, output, s.rows, s.in_features, s.out_features);
}

LENET_EXT_LINEAR_FORWARD(packed_forward)

}  // namespace lenet_ext::cpu::linear
