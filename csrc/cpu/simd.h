// The one SIMD vector type of the CPU kernels: a GCC vector extension of N lanes of T (64 bytes,
// one AVX-512 register, unless a kernel asks for fewer lanes), with its loads, stores and the few
// whole-vector moves the kernels share (lane folds, register transposes).
// Why not ATen's at::vec::Vectorized<T>: an extension is compiled once, outside ATen's
// per-capability builds, and there Vectorized falls back to its generic array form, an order of
// magnitude slower unless CPU_CAPABILITY_AVX512 is forced, which ties the binary to AVX-512
// (docs/performance.md, common to every kernel). GCC vectors follow -march instead (AVX-512
// native, SSE2 portable), and take __bf16 / _Float16 lanes when mixed precision comes. Kernels use it through Vec<T, N>; no other vector type is defined under csrc/cpu.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace lenet_ext::cpu::simd {

constexpr int kBytes = 64;
// The widest vector the build targets: register-blocked kernels (gemm.h) size their tiles in it,
// since a 64-byte Vec split into narrower registers would spill.
#if defined(__AVX512F__)
constexpr int kNativeBytes = 64;
#elif defined(__AVX__)
constexpr int kNativeBytes = 32;
#else
constexpr int kNativeBytes = 16;
#endif

// Offsets of a value's width: one compare mask of the values then selects offsets too, and GCC
// vectorises the select (int32 lanes for float, int64 for double).
template <typename scalar_t>
using offset_t = std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t>;

// N lanes of T. (A template of T: GCC drops vector_size from a typedef of a non-dependent type.)
template <typename T, int N = kBytes / int(sizeof(T))>
struct Vec {
  static constexpr int kLanes = N;
  typedef T type __attribute__((vector_size(N * sizeof(T))));
  using index_t = offset_t<T>;
  typedef index_t index_type __attribute__((vector_size(N * sizeof(index_t))));

  static type load(const T* p) {
    type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(T* p, const type& v) { std::memcpy(p, &v, sizeof(v)); }
  // lane i holds first + step * i
  static type ramp(T first, T step) {
    type v;
    for (int lane = 0; lane < N; ++lane) v[lane] = first + step * T(lane);
    return v;
  }
  static index_type lane_index() { return Vec<index_t, N>::ramp(0, 1); }
};

// Any GCC vector from or to memory (unaligned).
template <typename vector_t, typename T>
inline vector_t load(const T* p) {
  vector_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename vector_t, typename T>
inline void store(T* p, const vector_t& v) {
  std::memcpy(p, &v, sizeof(v));
}

// Keeps a loaded vector in a register: left alone, GCC folds the load into each of the multiply-
// adds that use it, and the extra loads, not the FMAs, bound the loop.
template <typename vector_t>
inline vector_t pin(vector_t v) {
#if defined(__x86_64__) && defined(__AVX512F__)
  __asm__("" : "+v"(v));
#endif
  return v;
}

// Folds kLanes vectors into one: result[i] = sum of the lanes of acc[i]. Each level adds the two
// halves of every item's lanes, packing two vectors' items into one (x's items, then y's), so
// after log2(kLanes) levels the items sit in order, one lane each.
template <typename scalar_t, int HALF>
inline typename Vec<scalar_t>::type fold(const typename Vec<scalar_t>::type& x,
                                         const typename Vec<scalar_t>::type& y) {
  using V = Vec<scalar_t>;
  constexpr int L = V::kLanes, items = L / (2 * HALF);  // items in x (and in y)
  typename V::index_type low;
  for (int lane = 0; lane < L; ++lane) {
    const int item = lane / HALF, offset = lane % HALF;
    low[lane] = item < items ? item * 2 * HALF + offset : L + (item - items) * 2 * HALF + offset;
  }
  return __builtin_shuffle(x, y, low) + __builtin_shuffle(x, y, low + HALF);
}

template <typename scalar_t, int HALF = Vec<scalar_t>::kLanes / 2>
inline typename Vec<scalar_t>::type fold_all(typename Vec<scalar_t>::type* acc) {
  for (int i = 0; i < HALF; ++i)  // 2 * HALF vectors in, HALF out
    acc[i] = fold<scalar_t, HALF>(acc[2 * i], acc[2 * i + 1]);
  if constexpr (HALF == 1) {
    return acc[0];
  } else {
    return fold_all<scalar_t, HALF / 2>(acc);
  }
}

// Transposes a kLanes x kLanes block held in kLanes vectors: at each level, rows i and i + HALF
// swap their off-diagonal HALF x HALF sub-blocks.
template <typename scalar_t, int HALF = Vec<scalar_t>::kLanes / 2>
inline void transpose_block(typename Vec<scalar_t>::type* rows) {
  using V = Vec<scalar_t>;
  constexpr int L = V::kLanes;
  typename V::index_type keep_low, keep_high;  // (row i, row i + HALF) -> new row i / i + HALF
  for (int lane = 0; lane < L; ++lane) {
    keep_low[lane] = lane & HALF ? L + lane - HALF : lane;
    keep_high[lane] = lane & HALF ? L + lane : lane + HALF;
  }
  for (int i = 0; i < L; ++i) {
    if (i & HALF) continue;
    const typename V::type low = rows[i], high = rows[i + HALF];
    rows[i] = __builtin_shuffle(low, high, keep_low);
    rows[i + HALF] = __builtin_shuffle(low, high, keep_high);
  }
  if constexpr (HALF > 1) transpose_block<scalar_t, HALF / 2>(rows);
}

// The first `count` (<= kLanes) lanes of a vector from or to memory, the rest of a load zero: a
// masked move on AVX-512, else a copy of that many elements.
template <typename T>
inline typename Vec<T>::type load_first(const T* p, int count) {
  typename Vec<T>::type v{};
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4)
    return typename Vec<T>::type(_mm512_maskz_loadu_ps(__mmask16((1u << count) - 1), p));
  else
    return typename Vec<T>::type(_mm512_maskz_loadu_pd(__mmask8((1u << count) - 1), p));
#endif
  std::memcpy(&v, p, count * sizeof(T));
  return v;
}
template <typename T>
inline void store_first(T* p, const typename Vec<T>::type& v, int count) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4)
    return _mm512_mask_storeu_ps(p, __mmask16((1u << count) - 1), __m512(v));
  else
    return _mm512_mask_storeu_pd(p, __mmask8((1u << count) - 1), __m512d(v));
#endif
  std::memcpy(p, &v, count * sizeof(T));
}

// out[j * ld_out + i] = in[i * ld_in + j] for i < rows, j < cols (out = in^T, row strides ld_in
// and ld_out), kLanes x kLanes blocks in registers; the blocks at the edges load and store only
// their elements.
template <typename scalar_t>
void transpose(const scalar_t* in, int64_t ld_in, scalar_t* out, int64_t ld_out, int64_t rows,
               int64_t cols) {
  using V = Vec<scalar_t>;
  constexpr int L = V::kLanes;
  for (int64_t i = 0; i < rows; i += L)
    for (int64_t j = 0; j < cols; j += L) {
      const int valid_rows = int(std::min<int64_t>(L, rows - i));
      const int valid_cols = int(std::min<int64_t>(L, cols - j));
      // one running pointer each way: 16 precomputed row pointers would not fit the registers
      const scalar_t* from = in + i * ld_in + j;
      scalar_t* to = out + j * ld_out + i;
      typename V::type block[L];
      if (valid_rows == L && valid_cols == L) {
        for (int r = 0; r < L; ++r, from += ld_in) {
          block[r] = V::load(from);
          asm("" : "+r"(from));
        }
        transpose_block<scalar_t>(block);
        for (int r = 0; r < L; ++r, to += ld_out) {
          V::store(to, block[r]);
          asm("" : "+r"(to));
        }
        continue;
      }
      for (int r = 0; r < L; ++r, from += ld_in)
        block[r] = r < valid_rows ? load_first(from, valid_cols) : typename V::type{};
      transpose_block<scalar_t>(block);
      for (int r = 0; r < valid_cols; ++r, to += ld_out) store_first(to, block[r], valid_rows);
    }
}

}  // namespace lenet_ext::cpu::simd
