// conv2d's CPU algorithms, one a file beside the reference (reference.cpp), and the selector that
// picks one per pass from the shape (select.cpp). Every kernel takes raw pointers and a ConvShape
// (kernels.h): `batch` images of `groups` groups, block i = image * groups + group contiguous in
// NCHW; grad_input and grad_weight are written, not added to. Defined for float and double.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <optional>
#include <string_view>

#include <ATen/Parallel.h>

#include "../gemm.h"
#include "../kernels.h"
#include "../parallel.h"
#include "../names.h"
#include "../simd.h"

namespace lenet_ext::cpu::conv2d {

using cpu::name;
using cpu::Pass;
using cpu::pass_named;

enum class Algorithm { kReference, kIm2col, kDirect, kRows, kLanes, kImplicit, kWinograd };

const char* name(Algorithm algorithm);
std::optional<Algorithm> algorithm_named(std::string_view name);

// Whether `algorithm` is written for this pass and shape (the range tests force it on). Forcing
// one outside it raises; `finite_weight` matters to the direct grad_input only (see select.cpp).
template <typename scalar_t>
bool claims(Algorithm algorithm, Pass pass, const ConvShape& s, int64_t batch, bool finite_weight);

// The algorithm a pass runs on this shape: select.cpp's table.
template <typename scalar_t>
Algorithm select(Pass pass, const ConvShape& s, int64_t batch, bool finite_weight);

// Runs `algorithm` (claimed) for the whole batch; the lanes algorithm takes whole blocks of
// kLanes images and hands the images past the last block to select's choice for them.
template <typename scalar_t>
void forward(Algorithm algorithm, const scalar_t* input, const scalar_t* weight,
             const scalar_t* bias, scalar_t* output, int64_t batch, int64_t groups,
             const ConvShape& s);
template <typename scalar_t>
void backward(Algorithm grad_input_algorithm, Algorithm grad_weight_algorithm,
              const scalar_t* grad_output, const scalar_t* input, const scalar_t* weight,
              scalar_t* grad_input, scalar_t* grad_weight, scalar_t* grad_bias, int64_t batch,
              int64_t groups, const ConvShape& s);

// ---- the algorithms (each file's opening comment says how it works) ----

template <typename scalar_t>
void reference_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                       scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s);
template <typename scalar_t>
void reference_grad_input(const scalar_t* grad_output, const scalar_t* weight,
                          scalar_t* grad_input, int64_t batch, int64_t groups, const ConvShape& s);
template <typename scalar_t>
void reference_grad_weight(const scalar_t* grad_output, const scalar_t* input,
                           scalar_t* grad_weight, int64_t batch, int64_t groups,
                           const ConvShape& s);
template <typename scalar_t>
void reference_grad_bias(const scalar_t* grad_output, scalar_t* grad_bias, int64_t batch,
                         int64_t channels, int64_t positions);
// grad_bias has one fast kernel, for every algorithm (grad_bias.cpp)
template <typename scalar_t>
void grad_bias(const scalar_t* grad_output, scalar_t* grad_bias, int64_t batch, int64_t channels,
               int64_t positions);

template <typename scalar_t>
void im2col_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                    scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s);
template <typename scalar_t>
void im2col_grad_input(const scalar_t* grad_output, const scalar_t* weight, scalar_t* grad_input,
                       int64_t batch, int64_t groups, const ConvShape& s);
template <typename scalar_t>
void im2col_grad_weight(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_weight,
                        int64_t batch, int64_t groups, const ConvShape& s);

template <typename scalar_t>
void implicit_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                      scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s);
template <typename scalar_t>
void implicit_grad_input(const scalar_t* grad_output, const scalar_t* weight, scalar_t* grad_input,
                         int64_t batch, int64_t groups, const ConvShape& s);
template <typename scalar_t>
void winograd_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                      scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s);
template <typename scalar_t>
void winograd_grad_input(const scalar_t* grad_output, const scalar_t* weight, scalar_t* grad_input,
                         int64_t batch, int64_t groups, const ConvShape& s);
template <typename scalar_t>
void winograd_grad_weight(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_weight,
                          int64_t batch, int64_t groups, const ConvShape& s);
template <typename scalar_t>
void direct_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                    scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s);
template <typename scalar_t>
void direct_grad_input(const scalar_t* grad_output, const scalar_t* weight, scalar_t* grad_input,
                       int64_t batch, int64_t groups, const ConvShape& s);
template <typename scalar_t>
void direct_grad_weight(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_weight,
                        int64_t batch, int64_t groups, const ConvShape& s);

template <typename scalar_t>
void rows_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                  scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s);
template <typename scalar_t>
void rows_grad_weight(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_weight,
                      int64_t batch, int64_t groups, const ConvShape& s);

// The first batch / kLanes * kLanes images; return how many images that was.
template <typename scalar_t>
int64_t lanes_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                      scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s);
template <typename scalar_t>
int64_t lanes_backward(const scalar_t* grad_output, const scalar_t* input, const scalar_t* weight,
                       scalar_t* grad_input, scalar_t* grad_weight, int64_t batch, int64_t groups,
                       const ConvShape& s);

// ---- what the fast algorithms share ----

// Chunks a batch of small planes is cut into at least, by im2col and implicit alike, so that the
// threads share them (fixed, not the thread count: grad_weight's order of summation follows them).
constexpr int64_t kMinChunks = 8;

// A 1x1 convolution with stride 1 and no padding: its unrolled columns are the input itself.
inline bool pointwise(const ConvShape& s) {
  return s.kernel_h == 1 && s.kernel_w == 1 && s.stride_h == 1 && s.stride_w == 1 &&
         s.pad_h == 0 && s.pad_w == 0;
}

// grad_input's A, packed straight from the weight: the weight flipped and its channels swapped,
// A(c, oc * kernel + t) = weight[oc][c][kernel - 1 - t] ([out_channels][rows][kernel] a group, with
// `rows` the input channels). A panel row gathers kRows channels `kernel` apart, which lie in a few
// cache lines that the next kernel - 1 rows of the panel read again; one pass over the weight,
// where a flipped copy first took two (512->512 3x3: 9.4 MB each).
template <typename scalar_t>
struct PackFlipped {
  using value_type = scalar_t;
  const scalar_t* weight;
  int64_t rows, kernel;
  void operator()(int64_t m0, int64_t count, int64_t k0, int64_t depth, scalar_t* out) const {
    constexpr int R = gemm::Tile<scalar_t>::kRows;
    for (int64_t p0 = 0; p0 < count; p0 += R, out += depth * R) {
      const int valid = int(std::min<int64_t>(R, count - p0));
      for (int64_t k = 0; k < depth; ++k) {
        const int64_t oc = (k0 + k) / kernel, tap = kernel - 1 - (k0 + k) % kernel;
        const scalar_t* src = weight + (oc * rows + m0 + p0) * kernel + tap;
        scalar_t* dst = out + k * R;
        for (int r = 0; r < valid; ++r) dst[r] = src[r * kernel];
        for (int r = valid; r < R; ++r) dst[r] = scalar_t(0);
      }
    }
  }
};

// The weight as the GEMMs' A, [out_channels, taps] a group with k along memory: read by PackA,
// or, where a group's weight is the A of several products (one a chunk of positions), packed
// once for the call. Each product would otherwise pack it again, or read it in place 8 times over
// (a chunk of 256 columns or fewer): 512->512 3x3 @7 at batch 32, forward 0.61 -> 0.65 of stock's
// speed. `flipped` (grad_input, `s` its transposed shape): PackFlipped's A, always packed once.
// product(group, f) calls f with the group's packer.
template <typename scalar_t>
struct WeightAsA {
  const scalar_t* weight;
  const ConvShape& s;
  const scalar_t* packed = nullptr;
  int64_t rows_padded = 0;

  WeightAsA(const scalar_t* weight, int64_t groups, const ConvShape& s, int64_t products_per_group,
            bool flipped = false)
      : weight(weight), s(s) {
    if (products_per_group < 2 && !flipped) return;
    const int64_t size = gemm::prepacked_size<scalar_t>(s.out_channels, s.taps());
    scalar_t* out = scratch<scalar_t>(Scratch::kPrepackedWeight, groups * size);
    const auto prepack = [&](int64_t g, const auto& packer) {
      rows_padded = gemm::prepack_a(s.out_channels, s.taps(), packer, out + g * size).rows_padded;
    };
    for (int64_t g = 0; g < groups; ++g) {
      if (flipped)
        prepack(g, PackFlipped<scalar_t>{weight + g * s.weight_block(), s.out_channels,
                                         s.kernel_h * s.kernel_w});
      else
        prepack(g, pack(g));
    }
    packed = out;
  }
  gemm::PackA<scalar_t> pack(int64_t group) const {
    return {{weight + group * s.weight_block(), s.taps(), 1}};
  }
  template <typename F>
  void product(int64_t group, const F& f) const {
    if (packed)
      return f(gemm::PrepackedA<scalar_t>{packed + group * rows_padded * s.taps(), rows_padded});
    f(pack(group));
  }
};

// Runs task(i) for i < count, each of `work` multiply-adds: on the calling thread when there is
// one (so that the GEMM inside may still split), else spread over the threads.
template <typename Task>
void run_conv_tasks(int64_t count, int64_t work, const Task& task) {
  if (count == 1) return task(0);
  at::parallel_for(0, count, grain(work, kConvTask), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) task(i);
  });
}

// A vector is simd.h's: one 512-bit register, kLanes float or double.
template <typename scalar_t>
using Lanes = simd::Vec<scalar_t>;

constexpr int64_t kDirectKernelW = 5;  // kernel width the unrolled tap tiles are compiled for
constexpr int64_t kLanesMaxRow = 14;   // widest row a lanes tile holds (lanes.cpp)
constexpr int64_t kDirectLanesBytes = int64_t(256) << 10;  // direct grad_weight's grad_output a thread
// Winograd's transformed weight (U, or dU) of one block of output channels (winograd.cpp)
constexpr int64_t kWinogradBlockBytes = int64_t(8) << 20;

// The output channels of a block: 16 points x the channels (whole vectors) x the block within
// kWinogradBlockBytes, the blocks even and of whole vectors; all of them where they fit in one.
template <typename scalar_t>
int64_t winograd_block(int64_t channels, int64_t out_channels) {
  constexpr int64_t L = Lanes<scalar_t>::kLanes;
  const auto round_up = [](int64_t n) { return (n + L - 1) / L * L; };
  const int64_t bytes = 16 * std::max(L, round_up(channels)) * int64_t(sizeof(scalar_t));
  const int64_t most = std::max<int64_t>(L, kWinogradBlockBytes / bytes / L * L);
  const int64_t blocks = std::max<int64_t>(1, (out_channels + most - 1) / most);
  return round_up((out_channels + blocks - 1) / blocks);
}

// Winograd's chunks of tiles a thread each (winograd.cpp): V and M of a chunk within
// kWinogradThreadChunkBytes, so that they stay in a thread's L2 beside U, where U takes a quarter
// of that or less (64x64 channels: winograd_small_weight) and the tiles make
// kWinogradThreadChunks of them or more (winograd_thread_chunks, for the forward convolution of
// that shape: grad_input's is its transposed shape).
constexpr int64_t kWinogradThreadChunkBytes = int64_t(1) << 20;
constexpr int64_t kWinogradThreadChunks = 8;

template <typename scalar_t>
bool winograd_small_weight(int64_t channels, int64_t out_channels) {
  constexpr int64_t L = Lanes<scalar_t>::kLanes;
  const auto round_up = [](int64_t n) { return (n + L - 1) / L * L; };
  return 16 * round_up(channels) * round_up(out_channels) * int64_t(sizeof(scalar_t)) <=
         kWinogradThreadChunkBytes / 4;
}
template <typename scalar_t>
bool winograd_thread_chunks(int64_t batch, int64_t out_h, int64_t out_w, int64_t channels,
                            int64_t out_channels);

// dst[0, count) = src[0, count) for the short rows of the direct kernels: whole vectors, then
// single elements. (std::copy becomes a memmove call per row, which costs more than the copy.)
template <typename scalar_t>
inline void copy_row(const scalar_t* src, int64_t count, scalar_t* dst) {
  using V = Lanes<scalar_t>;
  int64_t j = 0;
  for (; j + V::kLanes <= count; j += V::kLanes) V::store(dst + j, V::load(src + j));
  for (; j < count; ++j) {
    dst[j] = src[j];
    asm("");  // keeps GCC from recognising the loop as a memcpy
  }
}

// dst[i] = src[2 * i] for i in [i, vectors) by whole N-lane vectors, each one two-register
// shuffle; returns the first i left.
template <typename scalar_t, int N>
inline int64_t copy_even_vectors(const scalar_t* __restrict src, int64_t i, int64_t vectors,
                                 scalar_t* __restrict dst) {
  using V = simd::Vec<scalar_t, N>;
  typename V::index_type even;
  for (int lane = 0; lane < N; ++lane) even[lane] = 2 * lane;
  for (; i + N <= vectors; i += N)
    V::store(dst + i, __builtin_shuffle(V::load(src + 2 * i), V::load(src + 2 * i + N), even));
  return i;
}

// Whether every value is finite: no value's exponent all ones. Unsigned max over the exponent
// bits vectorises (std::isfinite in std::all_of runs a value a cycle, which took ~1 ms of a
// 512->512 3x3 layer's backward at batch 1); blocks of 4K values keep an early exit.
template <typename scalar_t>
inline bool all_finite(const scalar_t* data, int64_t count) {
  using bits_t = std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>;
  constexpr bits_t kExponent =
      sizeof(scalar_t) == 4 ? bits_t(0x7f800000u) : bits_t(0x7ff0000000000000ull);
  for (int64_t i0 = 0; i0 < count; i0 += 4096) {
    const int64_t end = std::min(count, i0 + 4096);
    bits_t most = 0;
    for (int64_t i = i0; i < end; ++i) {
      bits_t bits;
      std::memcpy(&bits, data + i, sizeof(bits));
      most = std::max<bits_t>(most, bits & kExponent);
    }
    if (most == kExponent) return false;
  }
  return true;
}

// dst[i] = src[2 * i] for i < count: vectors, then half vectors (8x8 outputs' rows), then
// scalars (a scalar loop was 44% of im2col's 16->32 3x3/2 grad_weight, twice its multiply-adds). A
// vector's second load reaches one element past its last even one, so the last vector only where
// that element is readable (`one_past`).
template <typename scalar_t>
inline void copy_even(const scalar_t* src, int64_t count, bool one_past, scalar_t* dst) {
  constexpr int L = Lanes<scalar_t>::kLanes;
  const int64_t vectors = one_past ? count : count - 1;
  int64_t i = copy_even_vectors<scalar_t, L>(src, 0, vectors, dst);
  if constexpr (L >= 8) i = copy_even_vectors<scalar_t, L / 2>(src, i, vectors, dst);
  for (; i < count; ++i) dst[i] = src[2 * i];
}

// out[k] = the sum of sums[k]'s kLanes lanes for k < count, kLanes at a time by simd's fold
template <typename scalar_t>
void sum_lanes(const scalar_t* sums, int64_t count, scalar_t* out) {
  using V = Lanes<scalar_t>;
  constexpr int L = V::kLanes;
  int64_t k0 = 0;
  for (; k0 + L <= count; k0 += L) {
    typename V::type vectors[L];
    for (int i = 0; i < L; ++i) vectors[i] = V::load(sums + (k0 + i) * L);
    V::store(out + k0, simd::fold_all<scalar_t>(vectors));
  }
  for (; k0 < count; ++k0) {
    scalar_t sum = 0;
    for (int lane = 0; lane < L; ++lane) sum += sums[k0 * L + lane];
    out[k0] = sum;
  }
}

}  // namespace lenet_ext::cpu::conv2d

// Explicit instantiation for float and double of a kernel with the usual forward or gradient
// signature, at the end of each algorithm's file.
#define LENET_EXT_CONV2D_FORWARD(fn)                                                          \
  template void fn(const float*, const float*, const float*, float*, int64_t, int64_t,         \
                   const ConvShape&);                                                          \
  template void fn(const double*, const double*, const double*, double*, int64_t, int64_t,     \
                   const ConvShape&);
#define LENET_EXT_CONV2D_GRAD(fn)                                                             \
  template void fn(const float*, const float*, float*, int64_t, int64_t, const ConvShape&);    \
  template void fn(const double*, const double*, double*, int64_t, int64_t, const ConvShape&);
