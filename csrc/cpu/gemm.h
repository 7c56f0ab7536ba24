// gemm: C[M,N] = A[M,K] * B[K,N] (C += with `accumulate`), the one matrix product under csrc/cpu
// (linear's three products, conv2d's im2col and 1x1 paths). Blocked as in BLIS: for each block of
// kColBlock columns and kDepth of K, B is packed into panels kCols wide (in L3), for each block of
// kRowBlock rows A is packed into panels kRows tall (in L2), and a register tile of kRows x kCols
// (two vectors a row) runs down kDepth: per k two vector loads of B from L1 and kRows broadcasts of
// A feed 2 * kRows FMAs, so the loop is bound by FMA throughput. Where a pack would serve only a
// few tiles (small products), the tile reads A's rows or B's rows in place instead, and a last
// panel of one vector or less runs a one-vector tile; an A shared by many products may come packed
// once (PrepackedA). The packers are parameters;
// Strided's read any row/column strides (a transpose is read as stored, never materialised), and a
// caller may pass its own to pack from another layout. Threads split C into a grid of blocks, each
// packing its own operands; every C element is summed by one thread in an order fixed by the
// shapes alone, so results are bitwise the same for any thread count.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "parallel.h"
#include "simd.h"

namespace lenet_ext::cpu::gemm {

// The register tile for the vector width the build targets: AVX-512 has 32 registers, so 14 rows
// x 2 vectors = 28 accumulators + 2 of B; AVX2 and SSE have 16, so 6 x 2 = 12 + 2.
template <typename T>
struct Tile {
  using V = simd::Vec<T, simd::kNativeBytes / int(sizeof(T))>;
  static constexpr int kLanes = V::kLanes;
  static constexpr int kCols = 2 * kLanes;
#if defined(__AVX512F__)
  static constexpr int kRows = 14;
#else
  static constexpr int kRows = 6;
#endif
  // kDepth x kCols of B (32 KB) stays in L1 while the tile walks down a kRowBlock block of A
  // (kRowBlock x kDepth, 336-672 KB, in L2); a kDepth x kColBlock block of B (4-8 MB) in L3.
  static constexpr int64_t kDepth = 1024 / int(sizeof(T));  // 256 floats, 128 doubles
  static constexpr int64_t kRowBlock = kRows * 24;
  static constexpr int64_t kColBlock = kCols * 128;
  // A pack used by at most this many tiles costs more than reading the operand in place.
  static constexpr int64_t kFewUses = 8;
};

// Bytes of C above which a C stored once goes around the caches (more than two L2s hold), and up
// to which it gains: a larger C is a fresh mmap each call (past glibc's largest heap threshold,
// 32 MB), and there streaming lost.
constexpr int64_t kStreamedC = int64_t(4) << 20, kStreamedCMost = int64_t(32) << 20;

// A matrix read in place: element (i, j) at data[i * row + j * col].
template <typename T>
struct Strided {
  const T* data;
  int64_t row, col;
};

namespace detail {

// out[k * WIDTH + r] = src[r * ld + k] for r < valid (0 for valid <= r < WIDTH), k < depth: the
// panel of a matrix whose k runs along memory, transposed kLanes x kLanes in registers.
template <typename T, int WIDTH>
void pack_across(const T* src, int64_t ld, int64_t valid, int64_t depth, T* out) {
  using V = simd::Vec<T>;
  constexpr int L = V::kLanes;
  const int64_t full = depth / L * L;
  for (int r0 = 0; r0 < WIDTH; r0 += L) {
    const int width = std::min(L, WIDTH - r0);
    for (int64_t k0 = 0; k0 < full; k0 += L) {
      typename V::type block[L];
      for (int r = 0; r < L; ++r)
        block[r] = r0 + r < valid ? V::load(src + (r0 + r) * ld + k0) : typename V::type{};
      simd::transpose_block<T>(block);
      for (int k = 0; k < L; ++k) std::memcpy(out + (k0 + k) * WIDTH + r0, &block[k], width * sizeof(T));
    }
  }
  for (int64_t k = full; k < depth; ++k)
    for (int r = 0; r < WIDTH; ++r) out[k * WIDTH + r] = r < valid ? src[r * ld + k] : T(0);
}

// The panels of WIDTH along i of a matrix src(i, k) = data[i * i_step + k * k_step], items
// [i0, i0 + count) x depth [k0, k0 + depth): out[(p * depth + k) * WIDTH + i] = src(i0 + p *
// WIDTH + i, k0 + k), zero past the last item. A's panels run along its rows, B's along columns.
// One row of a panel: `valid` elements of src, then zeros to WIDTH. A full row is a memcpy of
// constant size, which GCC inlines (std::copy_n becomes a memmove call, a library call a row).
template <typename T, int WIDTH>
inline void copy_panel_row(const T* __restrict src, int64_t valid, T* __restrict dst) {
  if (valid == WIDTH) return (void)std::memcpy(dst, src, WIDTH * sizeof(T));
  std::copy_n(src, valid, dst);
  std::fill(dst + valid, dst + WIDTH, T(0));
}

template <typename T, int WIDTH>
void pack_panels(const T* data, int64_t i_step, int64_t k_step, int64_t i0, int64_t count,
                 int64_t k0, int64_t depth, T* out) {
  if (i_step == 1) {  // each k's items contiguous: runs along k's row through 8 panels at a time
    constexpr int64_t kRun = 8 * WIDTH;
    for (int64_t g0 = 0; g0 < count; g0 += kRun)
    for (int64_t k = 0; k < depth; ++k) {
      const T* src = data + i0 + (k0 + k) * k_step;
      for (int64_t p0 = g0; p0 < std::min(count, g0 + kRun); p0 += WIDTH) {
        const int64_t valid = std::min<int64_t>(WIDTH, count - p0);
        copy_panel_row<T, WIDTH>(src + p0, valid, out + p0 * depth + k * WIDTH);
      }
    }
    return;
  }
  for (int64_t p0 = 0; p0 < count; p0 += WIDTH, out += depth * WIDTH) {
    const int64_t valid = std::min<int64_t>(WIDTH, count - p0);
    const T* src = data + (i0 + p0) * i_step + k0 * k_step;
    if (k_step == 1) {  // each item's k contiguous: register transposes
      pack_across<T, WIDTH>(src, i_step, valid, depth, out);
    } else {
      for (int64_t k = 0; k < depth; ++k)
        for (int64_t i = 0; i < WIDTH; ++i)
          out[k * WIDTH + i] = i < valid ? src[i * i_step + k * k_step] : T(0);
    }
  }
}

}  // namespace detail

// Packs rows [m0, m0 + rows) x depth [k0, k0 + depth) of A into panels of kRows rows.
template <typename T>
struct PackA {
  using value_type = T;
  Strided<T> operand;
  void operator()(int64_t m0, int64_t rows, int64_t k0, int64_t depth, T* out) const {
    const Strided<T>& a = operand;
    detail::pack_panels<T, Tile<T>::kRows>(a.data, a.row, a.col, m0, rows, k0, depth, out);
  }
};

// Packs depth [k0, k0 + depth) x columns [n0, n0 + cols) of B into panels of kCols columns.
template <typename T>
struct PackB {
  using value_type = T;
  Strided<T> operand;
  void operator()(int64_t k0, int64_t depth, int64_t n0, int64_t cols, T* out) const {
    const Strided<T>& b = operand;
    detail::pack_panels<T, Tile<T>::kCols>(b.data, b.col, b.row, n0, cols, k0, depth, out);
  }
};

// A packed once for many products with the same A (a convolution's weight against chunk after
// chunk of columns, each of which would pack all of it again). Panels of kRows rows, depth block
// after depth block: the block of rows from m0 (a multiple of kRows) and depth from k0 lies at
// data + k0 * rows_padded + m0 * depth.
template <typename T>
struct PrepackedA {
  using value_type = T;
  const T* data;
  int64_t rows_padded;
  const T* block(int64_t m0, int64_t k0, int64_t depth) const {
    return data + k0 * rows_padded + m0 * depth;
  }
};

// Elements prepack_a writes for an m_size x k_size A.
template <typename T>
int64_t prepacked_size(int64_t m_size, int64_t k_size) {
  return (m_size + Tile<T>::kRows - 1) / Tile<T>::kRows * Tile<T>::kRows * k_size;
}

// A (as pack_a packs it) into out, prepacked_size elements; panels split among the threads.
template <typename T, typename Packer>
PrepackedA<T> prepack_a(int64_t m_size, int64_t k_size, const Packer& pack_a, T* out) {
  using S = Tile<T>;
  const int64_t panels = (m_size + S::kRows - 1) / S::kRows, rows_padded = panels * S::kRows;
  const int64_t depths = (k_size + S::kDepth - 1) / S::kDepth;
  const int64_t items = depths * panels;
  const int64_t per_task = grain(S::kRows * S::kDepth, kStreamTask);
  at::parallel_for(0, items, per_task, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end;) {  // runs of panels within one depth block
      const int64_t block = item / panels, p0 = item % panels;
      const int64_t p1 = std::min(panels, p0 + (end - item));
      const int64_t k0 = block * S::kDepth, depth = std::min(S::kDepth, k_size - k0);
      pack_a(p0 * S::kRows, std::min(m_size, p1 * S::kRows) - p0 * S::kRows, k0, depth,
             out + k0 * rows_padded + p0 * S::kRows * depth);
      item += p1 - p0;
    }
  });
  return {out, rows_padded};
}

namespace detail {

// How a tile stores C: written, added to, or written around the caches (a C stored once and too
// big to stay in them: no read for ownership of each line first, and no eviction of the operands).
enum class Store { kWrite, kAdd, kStream };

template <typename T, typename V>
inline void store_streaming(T* p, const V& v) {
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64 && std::is_same_v<T, float>) return __builtin_ia32_movntps512(p, v);
  if constexpr (sizeof(V) == 64 && std::is_same_v<T, double>) return __builtin_ia32_movntpd512(p, v);
#endif
  std::memcpy(p, &v, sizeof(v));
}

// Operands a packer may leave in place: A's rows when its k runs along memory (the tile broadcasts
// from them), B's rows when its n does (the tile loads them); nullptr where it cannot.
template <typename Packer>
const Strided<typename Packer::value_type>* in_place(const Packer& packer) {
  if constexpr (requires { packer.operand; }) return &packer.operand;
  return nullptr;
}

// One tile: C[ROWS x cols] (+)= A[ROWS x depth] B[depth x cols], cols <= VECS * kLanes. A is a
// packed panel (a[k * kRows + r]) or, with A_ROWS, rows read in place (a[r * lda + k]); B's k-th
// row is at b + k * ldb, or, with B_TABLE, at b_table[k] + ldb. The accumulators are a fixed-size
// array that GCC keeps in registers; `pin` stops it from folding B's loads into every FMA.
template <typename T, int ROWS, int VECS, bool A_ROWS, bool B_TABLE>
inline void tile(int64_t depth, const T* __restrict a, int64_t lda, const T* __restrict b,
                 const T* const* b_table, int64_t ldb, T* c, int64_t ldc, int64_t cols, Store store) {
  using V = typename Tile<T>::V;
  constexpr int L = V::kLanes, R = Tile<T>::kRows;
  // A tile of fewer than 8 accumulators (the rows left under the last 14-row panel: 16 channels
  // are 14 + 2) would wait on each FMA's latency (4 cycles, 2 FMAs a cycle): it keeps SETS sets,
  // each run of SETS steps adding one to each, summed at the end (an order fixed by the shape).
  constexpr int SETS = ROWS * VECS >= 8 ? 1 : ROWS * VECS >= 4 ? 2 : 4;
  typename V::type acc[SETS][ROWS][VECS] = {};
  const auto step = [&](int64_t k, int set) __attribute__((always_inline)) {
    const T* b_row = B_TABLE ? b_table[k] + ldb : b + k * ldb;
    typename V::type b_k[VECS];
    for (int v = 0; v < VECS; ++v) b_k[v] = simd::pin(V::load(b_row + v * L));
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) {
      const T a_rk = A_ROWS ? a[r * lda + k] : a[k * R + r];
      for (int v = 0; v < VECS; ++v) acc[set][r][v] += a_rk * b_k[v];
    }
  };
  // C's rows, which the tile adds to at its end, are brought into L2 one a step over the first
  // ROWS steps: C outgrows the caches between visits (1 thread, squares of 512-2048: +2-3% of the
  // peak; prefetched into L1, or all at the start, they evicted the operands and gained nothing).
  // The rest runs unrolled, free of that test: loop counters share ports with the FMAs (+1-2%).
  int64_t k = 0;
  if (store == Store::kAdd)
    for (; k < std::min<int64_t>(ROWS, depth); ++k) {
      __builtin_prefetch(c + k * ldc, 0, 1);
      __builtin_prefetch(c + k * ldc + VECS * L - 1, 0, 1);
      step(k, 0);
    }
  if constexpr (SETS == 1) {
#pragma GCC unroll 4
    for (; k < depth; ++k) step(k, 0);
  } else {
    for (; k + SETS <= depth; k += SETS)
#pragma GCC unroll 4
      for (int set = 0; set < SETS; ++set) step(k + set, set);
    for (; k < depth; ++k) step(k, 0);
    for (int set = 1; set < SETS; ++set)
      for (int r = 0; r < ROWS; ++r)
        for (int v = 0; v < VECS; ++v) acc[0][r][v] += acc[set][r][v];
  }
  auto& sum = acc[0];
  if (cols == VECS * L) {
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r)
      for (int v = 0; v < VECS; ++v) {
        T* out = c + r * ldc + v * L;
        if (store == Store::kStream) store_streaming(out, sum[r][v]);
        else V::store(out, store == Store::kAdd ? V::load(out) + sum[r][v] : sum[r][v]);
      }
  } else {
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) {  // unrolled, so that acc stays in registers
      T values[VECS * L];
      for (int v = 0; v < VECS; ++v) V::store(values + v * L, sum[r][v]);
      T* row = c + r * ldc;
      for (int64_t j = 0; j < cols; ++j) row[j] = store == Store::kAdd ? row[j] + values[j] : values[j];
    }
  }
}

template <typename T, bool A_ROWS, bool B_TABLE, int ROWS = Tile<T>::kRows>
inline void tile_rows(int rows, int64_t depth, const T* a, int64_t lda, const T* b,
                      const T* const* b_table, int64_t ldb, T* c, int64_t ldc, int64_t cols,
                      Store store) {
  if constexpr (ROWS > 1) {
    if (rows < ROWS)
      return tile_rows<T, A_ROWS, B_TABLE, ROWS - 1>(rows, depth, a, lda, b, b_table, ldb, c, ldc,
                                                     cols, store);
  }
  if (cols <= Tile<T>::kLanes)
    return tile<T, ROWS, 1, A_ROWS, B_TABLE>(depth, a, lda, b, b_table, ldb, c, ldc, cols, store);
  tile<T, ROWS, 2, A_ROWS, B_TABLE>(depth, a, lda, b, b_table, ldb, c, ldc, cols, store);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// C rows [m0, m1) x columns [n0, n1) on the calling thread; `stream`: C is written once, around
// the caches (needs k_size <= kDepth, no accumulate, and C's rows and tiles 64-byte aligned).
template <typename T, typename PackedA, typename PackedB>
void blocked(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t k_size, const PackedA& pack_a,
             const PackedB& pack_b, T* c, int64_t ldc, bool accumulate, bool stream) {
  using S = Tile<T>;
  const int64_t depth_max = std::min(S::kDepth, k_size);
  const int64_t a_rows = std::min(S::kRowBlock, ceil_div(m1 - m0, S::kRows) * S::kRows);
  const int64_t b_cols = std::min(S::kColBlock, ceil_div(n1 - n0, S::kCols) * S::kCols);
  const Strided<T>* a_in_place = in_place(pack_a);
  const Strided<T>* b_in_place = in_place(pack_b);
  // Operands read in place where a pack would be used too few times to pay for itself: A's rows
  // (k along memory) under at most kFewUses column panels, B's panels (n along memory) under at
  // most kFewUses row tiles (the products of LeNet's and other small linear layers). B only where
  // its rows lie within a page of each other: further apart, a panel's rows share a few L1 sets
  // and no prefetcher follows them (VGG's fc6 grad_input ran at half speed in place).
  // A packer that knows where each row of B starts (conv2d's taps over a padded image) lets the
  // tile read B's rows in place through a table of them, under the same bound.
  const bool few_row_tiles = m1 - m0 <= S::kFewUses * S::kRows;
  constexpr bool kKnowsRows = requires { pack_b.row(int64_t(0)); };
  const bool b_table_direct = kKnowsRows && few_row_tiles;
  const bool a_rows_direct = a_in_place && a_in_place->col == 1 && !b_table_direct &&
                             ceil_div(n1 - n0, S::kCols) <= S::kFewUses;
  const bool b_direct = b_table_direct || (b_in_place && b_in_place->col == 1 && few_row_tiles &&
                                           b_in_place->row * int64_t(sizeof(T)) < 4096);
  // Under a single row block B's panels are used once each: packed a few at a time just before
  // their tiles, they stay in L2, where a whole block (up to 4 MB) would go out to L3 and back.
  // Eight panels a group keep the pack's reads 8 panels long along B's rows.
  const bool b_by_group = !b_direct && m1 - m0 <= S::kRowBlock;
  constexpr int64_t kGroupCols = 8 * S::kCols;
  const T* b_table[S::kDepth];
  constexpr bool kPrepacked = requires { pack_a.block(int64_t(0), int64_t(0), int64_t(0)); };
  T* a_buffer = a_rows_direct || kPrepacked ? nullptr
                                            : scratch<T>(Scratch::kPackedA, a_rows * depth_max);
  T* b_buffer = scratch<T>(Scratch::kPackedB,
                           (b_direct ? S::kCols : b_by_group ? kGroupCols : b_cols) * depth_max);
  for (int64_t jc = n0; jc < n1; jc += S::kColBlock) {
    const int64_t cols = std::min(S::kColBlock, n1 - jc);
    for (int64_t pc = 0; pc < k_size; pc += S::kDepth) {
      const int64_t depth = std::min(S::kDepth, k_size - pc);
      const Store store = accumulate || pc > 0 ? Store::kAdd
                          : stream                ? Store::kStream
                                                  : Store::kWrite;
      if (!b_direct && !b_by_group) pack_b(pc, depth, jc, cols, b_buffer);
      if constexpr (kKnowsRows)
        if (b_table_direct)
          for (int64_t k = 0; k < depth; ++k) b_table[k] = pack_b.row(pc + k);
      for (int64_t ic = m0; ic < m1; ic += S::kRowBlock) {
        const int64_t rows = std::min(S::kRowBlock, m1 - ic);
        const T* a_block = a_buffer;
        if constexpr (kPrepacked) a_block = pack_a.block(ic, pc, depth);
        else if (!a_rows_direct) pack_a(ic, rows, pc, depth, a_buffer);
        for (int64_t jr = 0; jr < cols; jr += S::kCols) {
          const int64_t panel_cols = std::min<int64_t>(S::kCols, cols - jr);
          // B's panel: in place, packed while the first row block runs over it (from L1), packed
          // with its group, or taken from the block packed above
          const T* b = nullptr;
          int64_t ldb = S::kCols;
          const bool from_table = b_table_direct && panel_cols == S::kCols;
          if (from_table) {
            ldb = jc + jr;  // the column, read through the table
          } else if (b_direct && panel_cols == S::kCols) {
            b = b_in_place->data + pc * b_in_place->row + jc + jr;
            ldb = b_in_place->row;
          } else if (b_direct) {
            if (ic == m0) pack_b(pc, depth, jc + jr, panel_cols, b_buffer);
            b = b_buffer;
          } else if (b_by_group) {
            const int64_t in_group = jr % kGroupCols;
            if (in_group == 0) pack_b(pc, depth, jc + jr, std::min(kGroupCols, cols - jr), b_buffer);
            b = b_buffer + in_group * depth;
          } else {
            b = b_buffer + jr * depth;
          }
          for (int64_t ir = 0; ir < rows; ir += S::kRows) {
            const int tile_rows_count = int(std::min<int64_t>(S::kRows, rows - ir));
            T* c_tile = c + (ic + ir) * ldc + jc + jr;
            if (a_rows_direct)
              tile_rows<T, true, false>(tile_rows_count, depth,
                                        a_in_place->data + (ic + ir) * a_in_place->row + pc,
                                        a_in_place->row, b, nullptr, ldb, c_tile, ldc, panel_cols,
                                        store);
            else if (from_table)
              tile_rows<T, false, true>(tile_rows_count, depth, a_block + ir * depth, 0, nullptr,
                                        b_table, ldb, c_tile, ldc, panel_cols, store);
            else
              tile_rows<T, false, false>(tile_rows_count, depth, a_block + ir * depth, 0, b,
                                         nullptr, ldb, c_tile, ldc, panel_cols, store);
          }
        }
      }
    }
  }
#if defined(__AVX512F__)
  if (stream) __builtin_ia32_sfence();  // streamed stores are weakly ordered: done before the join
#endif
}

}  // namespace detail

// C[m, n] (+)= sum_k A(m, k) B(k, n) for C row-major with row stride ldc; pack_a and pack_b as
// PackA and PackB. Without `accumulate` C is overwritten (and zeroed when k_size is 0).
template <typename T, typename PackedA, typename PackedB>
void gemm(int64_t m_size, int64_t n_size, int64_t k_size, const PackedA& pack_a,
          const PackedB& pack_b, T* c, int64_t ldc, bool accumulate = false) {
  using S = Tile<T>;
  using detail::ceil_div;
  if (m_size <= 0 || n_size <= 0) return;
  if (k_size <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m_size; ++i) std::fill_n(c + i * ldc, n_size, T(0));
    return;
  }
  // Threads: a grid of row x column blocks, the factorisation that wastes the least padding of the
  // tiles; a split only from kGemmTask multiply-adds a thread (each block packs its own operands,
  // so a split needs no shared pack first).
  const int64_t work = m_size * n_size * k_size;
  const int64_t threads = at::in_parallel_region()
                              ? 1
                              : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                                       work / kGemmTask));
  int64_t grid_rows = 1, grid_cols = 1, best = -1;
  for (int64_t r = 1; r <= threads; ++r) {
    if (threads % r) continue;
    const int64_t cols = threads / r;
    const int64_t tile = ceil_div(ceil_div(m_size, r), S::kRows) * S::kRows *
                         ceil_div(ceil_div(n_size, cols), S::kCols) * S::kCols;
    if (best < 0 || tile < best) best = tile, grid_rows = r, grid_cols = cols;
  }
  // block boundaries on whole tiles
  const int64_t rows_each = ceil_div(ceil_div(m_size, grid_rows), S::kRows) * S::kRows;
  const int64_t cols_each = ceil_div(ceil_div(n_size, grid_cols), S::kCols) * S::kCols;
  // C stored around the caches where it is written once and outgrows them (grad_weight's product,
  // K the batch; 1 thread: MNIST-net fc1's at batch 8 308 -> 192 us, VGG fc8's 1073 -> 655 us).
  // Not above kStreamedCMost: VGG fc7's (64 MB) ran 25 -> 30 ms streamed.
  const int64_t c_bytes = m_size * n_size * int64_t(sizeof(T));
  const bool stream = !accumulate && k_size <= S::kDepth && c_bytes > kStreamedC &&
                      c_bytes <= kStreamedCMost && reinterpret_cast<uintptr_t>(c) % 64 == 0 &&
                      ldc * sizeof(T) % 64 == 0;
  const auto run = [&](int64_t block) {
    const int64_t m0 = block / grid_cols * rows_each, n0 = block % grid_cols * cols_each;
    if (m0 < m_size && n0 < n_size)
      detail::blocked(m0, std::min(m_size, m0 + rows_each), n0, std::min(n_size, n0 + cols_each),
                      k_size, pack_a, pack_b, c, ldc, accumulate, stream);
  };
  if (grid_rows * grid_cols == 1) return run(0);
  at::parallel_for(0, grid_rows * grid_cols, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) run(block);
  });
}

// Both operands read in place.
template <typename T>
void gemm(int64_t m_size, int64_t n_size, int64_t k_size, Strided<T> a, Strided<T> b, T* c,
          int64_t ldc, bool accumulate = false) {
  gemm(m_size, n_size, k_size, PackA<T>{a}, PackB<T>{b}, c, ldc, accumulate);
}

}  // namespace lenet_ext::cpu::gemm
