// conv2d by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2016), for 3x3 kernels with
// stride 1 and no dilation. Each 2x2 block of outputs ("tile") comes from a 4x4 block of input d:
// Y = A^T [(G g G^T) . (B^T d B)] A, so the 16 products of a tile's 16 transformed points xi
// replace direct convolution's 36: summed over the channels, each point is one GEMM,
// M[xi][k][tile] = U[xi][k][c] V[xi][c][tile] (gemm.h), 2.25x fewer multiply-adds. grad_input is
// the forward of grad_output with the weight flipped and its channels swapped (as implicit.cpp);
// grad_weight is the transpose: dU[xi] = V[xi]^T dM[xi] summed over tiles, dM = A dY A^T, and
// dg = G^T dU G. F(2x2) rather than F(4x4): its float32 error stays below direct summation's,
// where F(4x4)'s was 2-8x above it (docs/performance.md).
// Layout: the input transform and the inverse run on vectors of 16 tiles of a row (of up to 4
// rows, where a row is half a vector or less): a tile's four input columns are the even and odd
// elements of zero-padded row copies, and its two output columns interleave back into whole
// output rows, so V and M are read by the GEMM in place.
// grad_weight's dM alone runs on vectors of 16 output channels (grad_output's rows turned
// [x][channel] by register transposes). Memory traffic: the input and output once each (per
// block of output channels); V and M in chunks of kChunkBytes, which the threads share (the
// transforms split by rows, the points' products by point), or, under a small U with tiles
// enough, in chunks of a thread each that stay in its L2 beside U (winograd_thread_chunks:
// 64->64 @56 forward 1.3x faster); U (16/9 of the weight, in blocks of at most
// kWinogradBlockBytes) read once a chunk. The chunks are fixed by the shape and each point's GEMM
// is one thread's, so results are the same for any thread count. A transform's sums mix a tile's
// values, so one infinity or NaN spreads over its tile: a result with any non-finite value is
// recomputed by im2col, whose sums are stock's.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "../gemm.h"
#include "../parallel.h"
#include "algorithms.h"

namespace lenet_ext::cpu::conv2d {
namespace {

constexpr int kPoints = 16;  // 4 x 4 transformed points a tile
constexpr double kBT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
constexpr double kG[4][3] = {{1, 0, 0}, {.5, .5, .5}, {.5, -.5, .5}, {0, 0, 1}};
constexpr double kGT[3][4] = {{1, .5, .5, 0}, {0, .5, -.5, 0}, {0, .5, .5, 1}};
constexpr double kAT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
constexpr double kA[4][2] = {{1, 0}, {1, 1}, {1, -1}, {0, -1}};

constexpr int64_t kChunkBytes = int64_t(4) << 20;        // V and M (or dM) of one chunk

// sum_i t[i] * value(i) with t's zeros skipped and its ones added: t is a constant, so after
// unrolling only the additions (and the halvings) are left.
template <typename scalar_t, int S, typename V, typename Value>
inline V combine(const double (&t)[S], const Value& value) {
  V acc{};
  bool first = true;
#pragma GCC unroll 4
  for (int i = 0; i < S; ++i) {
    if (t[i] == 0) continue;
    const V v = t[i] == 1 ? value(i) : t[i] == -1 ? -value(i) : value(i) * scalar_t(t[i]);
    acc = first ? v : acc + v;
    first = false;
  }
  return acc;
}

// out = T x T^T for T of R x S: a row pass, then a column pass.
template <typename scalar_t, int R, int S, const double (&T)[R][S], typename V>
inline void sandwich(const V (&x)[S][S], V (&out)[R][R]) {
  V mid[R][S];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < S; ++j)
      mid[r][j] = combine<scalar_t, S, V>(T[r], [&](int i) { return x[i][j]; });
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int q = 0; q < R; ++q)
      out[r][q] = combine<scalar_t, S, V>(T[q], [&](int j) { return mid[r][j]; });
}

int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

// Tile rows a vector of `lanes` tiles holds side by side in the input transform and the inverse:
// rows of half a vector or less, up to 4 of them.
int64_t stacked_rows(int64_t tiles_w, int lanes) {
  return tiles_w > lanes / 2 ? 1 : std::min<int64_t>(4, lanes / tiles_w);
}

// The planes of one group: element (image n, channel c, y, x) at
// data[n * image + c * channel + y * width + x].
template <typename scalar_t>
struct Planes {
  const scalar_t* data;
  int64_t image, channel, channels, height, width;
};

// The tiles of a tiles_h x tiles_w grid: tile (r = n * tiles_h + th, tw) is the S x S block of
// image n at (2 * th + offset_h, 2 * tw + offset_w), zero outside the plane. Tile rows [r0, r1)
// are transformed to out[xi * point_stride + (r - first) * tiles_w * cp + tw * cp + c] =
// (T d T^T)[xi] for channel c (cp: channels rounded up to whole vectors, the extra ones zero).
template <typename scalar_t, int S, const double (&T)[4][S]>
void transform_tiles(const Planes<scalar_t>& src, int64_t offset_h, int64_t offset_w,
                     int64_t tiles_h, int64_t tiles_w, int64_t first, int64_t r0, int64_t r1,
                     int64_t cp, int64_t point_stride, scalar_t* out) {
  using V = Lanes<scalar_t>;
  constexpr int L = V::kLanes;
  // a ring of S rows [x][channel], each held row y in slot y mod S; the columns past the plane
  // and the channels past the last stay zero
  const int64_t width = 2 * tiles_w + S - 2, row_size = width * cp;
  scalar_t* ring = scratch<scalar_t>(Scratch::kColumns, S * row_size);
  std::fill_n(ring, S * row_size, scalar_t(0));
  constexpr int64_t kNone = std::numeric_limits<int64_t>::min();
  int64_t held[S];
  std::fill_n(held, S, kNone);
  const int64_t x0 = std::max<int64_t>(0, -offset_w);  // first column inside the plane
  const int64_t x1 = std::min(width, src.width - offset_w);
  int64_t image_held = -1;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / tiles_h, y0 = r % tiles_h * 2 + offset_h;
    if (n != image_held) std::fill_n(held, S, kNone), image_held = n;
    scalar_t* rows[S];
    for (int i = 0; i < S; ++i) {
      const int64_t y = y0 + i, slot = ((y % S) + S) % S;
      rows[i] = ring + slot * row_size;
      if (held[slot] == y) continue;
      held[slot] = y;
      if (y >= 0 && y < src.height && x1 > x0)
        simd::transpose(src.data + n * src.image + y * src.width + x0 + offset_w, src.channel,
                        rows[i] + x0 * cp, cp, src.channels, x1 - x0);
      else if (x1 > x0)
        std::fill(rows[i] + x0 * cp, rows[i] + x1 * cp, scalar_t(0));
    }
    scalar_t* tile_out = out + (r - first) * tiles_w * cp;
    for (int64_t tw = 0; tw < tiles_w; ++tw)
      for (int64_t c = 0; c < cp; c += L) {
        typename V::type d[S][S], v[4][4];
#pragma GCC unroll 4
        for (int i = 0; i < S; ++i)
#pragma GCC unroll 4
          for (int j = 0; j < S; ++j) d[i][j] = V::load(rows[i] + (2 * tw + j) * cp + c);
        sandwich<scalar_t, 4, S, T>(d, v);
#pragma GCC unroll 4
        for (int a = 0; a < 4; ++a)
#pragma GCC unroll 4
          for (int b = 0; b < 4; ++b)
            V::store(tile_out + (a * 4 + b) * point_stride + tw * cp + c, v[a][b]);
      }
  }
}

// The input transform for tile rows [r0, r1): out[xi * point_stride + c * ldv + (r - first) *
// tiles_w + tw] = (B^T d B)[xi] of channel c's tile (r, tw), d the 4x4 block of image n at
// (2 * th - pad_h, 2 * tw - pad_w), zero outside the plane. The vectors hold kLanes tiles of a
// row: their four columns are the even and odd elements of the input row from 2 * tw and from
// 2 * tw + 2, taken from zero-padded copies of the rows. V comes out [c][tile], which the GEMM
// reads in place (a [tile][c] V had to be transposed into its panels, which took as long as the
// products for 32 output channels).
template <typename scalar_t>
void transform_input(const Planes<scalar_t>& src, int64_t pad_h, int64_t pad_w, int64_t tiles_h,
                     int64_t tiles_w, int64_t first, int64_t r0, int64_t r1, int64_t point_stride,
                     int64_t ldv, scalar_t* out) {
  using V = Lanes<scalar_t>;
  using Vector = typename V::type;
  constexpr int L = V::kLanes;
  // the rows an image's tile rows of this task read, padded: the plane's columns at [pad_w,
  // pad_w + src.width), zeros around them, and slack for the last vector's loads. All are copied
  // before any is read: a row read right after its copy waited on store forwarding (60% of the
  // transform's time, when the rows went through a ring of 4)
  const int64_t width = round_up(2 * tiles_w + 2, L) + 2 * L;
  scalar_t* rows = scratch<scalar_t>(Scratch::kColumns, (2 * tiles_h + 2) * width);
  std::fill_n(rows, (2 * tiles_h + 2) * width, scalar_t(0));
  typename V::index_type even, odd;
  for (int lane = 0; lane < L; ++lane) even[lane] = 2 * lane, odd[lane] = 2 * lane + 1;
  // Rows of half a vector of tiles or less (planes up to 16 wide, 7x7 and 14x14 among them): a
  // vector takes `stacked` tile rows of an image side by side, where one row left lanes idle
  // (64->64 @8 grad_weight: the transform took 37% of the time). pick[g][p] appends row g:
  // lanes [g tiles_w, (g + 1) tiles_w) take its columns 2t + p, the lanes before them are kept.
  const int64_t stacked = stacked_rows(tiles_w, L);
  typename V::index_type pick[4][2];
  for (int g = 1; g < 4; ++g)
    for (int p = 0; p < 2; ++p)
      for (int lane = 0; lane < L; ++lane) {
        const int64_t t = lane - g * tiles_w;
        pick[g][p][lane] = lane < g * tiles_w ? (g == 1 ? 2 * lane + p : lane)
                           : t < tiles_w      ? int(L + 2 * t + p)
                                              : lane;
      }
  for (int64_t c = 0; c < src.channels; ++c)
    for (int64_t r_image = r0; r_image < r1;) {
      const int64_t n = r_image / tiles_h, r_end = std::min(r1, (n + 1) * tiles_h);
      const int64_t y_first = r_image % tiles_h * 2 - pad_h;
      const scalar_t* plane = src.data + n * src.image + c * src.channel;
      for (int64_t j = 0; j < 2 * (r_end - r_image) + 2; ++j) {
        const int64_t y = y_first + j;
        if (y >= 0 && y < src.height) copy_row(plane + y * src.width, src.width, rows + j * width + pad_w);
        else std::fill_n(rows + j * width + pad_w, src.width, scalar_t(0));
      }
      // lanes past the tiles of a vector land on the next tiles, which this thread writes next;
      // only where they would pass the task's last row are they left out (masked stores, slow
      // across cache lines)
      const auto transform = [&](Vector (&d)[4][4], int64_t r, int64_t tw, int64_t valid) {
        Vector v[4][4];
        sandwich<scalar_t, 4, 4, kBT>(d, v);
        scalar_t* to = out + c * ldv + (r - first) * tiles_w + tw;
        const bool whole = (r1 - r) * tiles_w - tw >= L;
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i)
#pragma GCC unroll 4
          for (int j = 0; j < 4; ++j) {
            scalar_t* at = to + (i * 4 + j) * point_stride;
            if (whole) V::store(at, v[i][j]);
            else simd::store_first(at, v[i][j], int(valid));
          }
      };
      if (stacked > 1) {
        for (int64_t r = r_image; r < r_end; r += stacked) {
          const int64_t count = std::min(stacked, r_end - r);
          Vector d[4][4];
#pragma GCC unroll 4
          for (int i = 0; i < 4; ++i)
            for (int shift = 0; shift < 2; ++shift) {  // columns from 0, and from 2
              // row i of each stacked tile row (the last again past them)
              const auto row = [&](int64_t g) {
                return V::load(rows + (2 * (r - r_image + std::min(g, count - 1)) + i) * width + 2 * shift);
              };
              const Vector first_row = row(0), second_row = row(1);
              for (int p = 0; p < 2; ++p) {
                Vector x = __builtin_shuffle(first_row, second_row, pick[1][p]);
                for (int64_t g = 2; g < stacked; ++g) x = __builtin_shuffle(x, row(g), pick[g][p]);
                d[i][2 * shift + p] = x;
              }
            }
          transform(d, r, 0, count * tiles_w);
        }
        r_image = r_end;
        continue;
      }
      for (int64_t r = r_image; r < r_end; ++r) {
        const scalar_t* rows_of_tile[4];
        for (int i = 0; i < 4; ++i) rows_of_tile[i] = rows + (2 * (r - r_image) + i) * width;
        for (int64_t tw = 0; tw < tiles_w; tw += L) {
          Vector d[4][4];
#pragma GCC unroll 4
          for (int i = 0; i < 4; ++i) {
            const scalar_t* from = rows_of_tile[i] + 2 * tw;
            const Vector a = V::load(from), b = V::load(from + L);
            const Vector shifted_a = V::load(from + 2), shifted_b = V::load(from + 2 + L);
            d[i][0] = __builtin_shuffle(a, b, even), d[i][1] = __builtin_shuffle(a, b, odd);
            d[i][2] = __builtin_shuffle(shifted_a, shifted_b, even);
            d[i][3] = __builtin_shuffle(shifted_a, shifted_b, odd);
          }
          transform(d, r, tw, std::min<int64_t>(L, tiles_w - tw));
        }
      }
      r_image = r_end;
    }
}

// The inverse for tile rows [r0, r1): Y = A^T M A (+ bias) of m[xi * point_stride + k * ldm +
// (r - first) * tiles_w + tw] for `count` output channels k, written to dst (element (n, k, y, x) at
// dst + n * image + k * channel + y * width + x), rows and columns past the plane dropped. The
// vectors hold kLanes tiles of a row, so a tile row's two output columns interleave into whole
// runs of its two output rows; where a row is half a vector or less (as in transform_input), a
// vector holds the stacked_rows consecutive tile rows that M holds side by side, and each row's
// runs are shuffled out of it. Returns whether every value it kept was finite.
template <typename scalar_t>
bool inverse_tiles(const scalar_t* m, int64_t point_stride, int64_t ldm, const scalar_t* bias,
                   scalar_t* dst, int64_t image, int64_t channel, int64_t count, int64_t height,
                   int64_t width, int64_t tiles_h, int64_t tiles_w, int64_t first, int64_t r0,
                   int64_t r1) {
  using V = Lanes<scalar_t>;
  using Vector = typename V::type;
  constexpr int L = V::kLanes;
  const int64_t stacked = stacked_rows(tiles_w, L);
  // run[g][h]: outputs [h L, (h + 1) L) of stacked row g's (left column, right column) pairs
  typename V::index_type run[4][2];
  for (int g = 0; g < 4; ++g)
    for (int h = 0; h < 2; ++h)
      for (int lane = 0; lane < L; ++lane) {
        const int j = h * L + lane;
        run[g][h][lane] = int(std::min<int64_t>(g * tiles_w + j / 2, L - 1)) + j % 2 * L;
      }
  const typename V::index_type lanes = V::lane_index();
  Vector poison{};  // 0 * value: 0, or NaN where a value is not finite
  const int64_t vectors = stacked > 1 ? 1 : tiles_w;  // of a (stack of) tile row(s)
  for (int64_t r = r0; r < r1; r += stacked) {
    const int64_t rows = std::min(stacked, r1 - r);
    for (int64_t k = 0; k < count; ++k) {
      const scalar_t* from = m + k * ldm + (r - first) * tiles_w;
      const scalar_t b = bias ? bias[k] : scalar_t(0);
      for (int64_t tw = 0; tw < vectors; tw += L) {
        Vector x[4][4], y[2][2];
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i)
#pragma GCC unroll 4
          for (int j = 0; j < 4; ++j) x[i][j] = V::load(from + (i * 4 + j) * point_stride + tw);
        sandwich<scalar_t, 2, 4, kAT>(x, y);
        // lanes past the rows' tiles hold the next rows' tiles, or nothing
        const int64_t valid = stacked > 1 ? rows * tiles_w : tiles_w - tw;
        poison += lanes < typename V::index_t(valid) ? (y[0][0] + y[0][1] + y[1][0] + y[1][1]) * scalar_t(0) : Vector{};
        const int64_t columns = width - 2 * tw;
        for (int64_t g = 0; g < rows; ++g) {
          const int64_t n = (r + g) / tiles_h, y0 = (r + g) % tiles_h * 2;
          scalar_t* out = dst + n * image + k * channel + y0 * width + 2 * tw;
          for (int i = 0; i < 2 && y0 + i < height; ++i) {
            const Vector left = y[i][0] + b, right = y[i][1] + b;
            scalar_t* row = out + i * width;
            const Vector first_half = __builtin_shuffle(left, right, run[g][0]);
            if (columns >= 2 * L) {
              V::store(row, first_half), V::store(row + L, __builtin_shuffle(left, right, run[g][1]));
            } else {
              simd::store_first(row, first_half, int(std::min<int64_t>(L, columns)));
              if (columns > L)
                simd::store_first(row + L, __builtin_shuffle(left, right, run[g][1]), int(columns - L));
            }
          }
        }
      }
    }
  }
  for (int lane = 0; lane < L; ++lane)
    if (poison[lane] != 0) return false;
  return true;
}

// How the tiles of a pass are cut: tile rows r < rows (every image's, in order), `per_chunk` a
// chunk, output channels in blocks of `block`.
struct Plan {
  int64_t tiles_h, tiles_w, rows, cp, block, bp, per_chunk;

  template <typename scalar_t>
  static Plan of(int64_t batch, int64_t out_h, int64_t out_w, int64_t channels, int64_t out_channels,
                 int64_t chunk_bytes = kChunkBytes) {
    constexpr int64_t L = Lanes<scalar_t>::kLanes, bytes = sizeof(scalar_t);
    Plan p{};
    p.tiles_h = (out_h + 1) / 2, p.tiles_w = (out_w + 1) / 2, p.rows = batch * p.tiles_h;
    p.cp = round_up(channels, L);
    p.block = winograd_block<scalar_t>(channels, out_channels);
    p.bp = round_up(std::min(p.block, out_channels), L);
    // V and M (or dM) of a tile row; a chunk no larger than needed
    const int64_t row_bytes = std::max<int64_t>(1, kPoints * p.tiles_w * (p.cp + p.bp) * bytes);
    p.per_chunk = std::max<int64_t>(1, std::min(chunk_bytes / row_bytes, p.rows));
    return p;
  }
  int64_t chunks() const { return (rows + per_chunk - 1) / per_chunk; }
};

// A thread's buffers for a plan, k a block of output channels: the calling thread's weight taps
// (forward [k][tap][c], grad_weight's sums [c][tap][k]) and U [xi][k][c] (dU [xi][c][k]), shared
// with its workers; and the buffers of the chunk a thread runs, V [xi][tile][c] and M [xi][k][tile]
// (dM [xi][tile][k]), M's rows with a vector of slack that the inverse's last vector reads.
template <typename scalar_t>
struct WeightBuffers {
  scalar_t *taps, *weight;
  explicit WeightBuffers(const Plan& plan)
      : taps(scratch<scalar_t>(Scratch::kWinogradTaps, 9 * plan.cp * plan.bp)),
        weight(scratch<scalar_t>(Scratch::kWinogradWeight, kPoints * plan.cp * plan.bp)) {}
};
template <typename scalar_t>
struct ChunkBuffers {
  scalar_t *tiles, *products;
  int64_t ldm;
  explicit ChunkBuffers(const Plan& plan)
      : ldm(round_up(plan.per_chunk * plan.tiles_w, Lanes<scalar_t>::kLanes) + Lanes<scalar_t>::kLanes) {
    tiles = scratch<scalar_t>(Scratch::kWinogradTiles, kPoints * plan.cp * ldm);
    products = scratch<scalar_t>(Scratch::kWinogradProducts, kPoints * plan.bp * ldm);
  }
};

// Runs task(r0, r1) over tile rows [first, last), spread over the threads.
template <typename Task>
void over_rows(int64_t first, int64_t last, int64_t row_work, const Task& task) {
  at::parallel_for(first, last, grain(row_work, kConvTask), task);
}

// Runs task(xi) for every point, one thread each: a point's GEMM is summed by one thread.
template <typename Task>
void over_points(const Task& task) {
  at::parallel_for(0, kPoints, 1, [&](int64_t begin, int64_t end) {
    for (int64_t xi = begin; xi < end; ++xi) task(xi);
  });
}

// The forward convolution (3x3, stride 1) of every group; whether every output is finite. With
// `flipped`, the weight of a group is [channels][out_channels][3][3] with its taps reversed (the
// forward's weight, for grad_input).
template <typename scalar_t>
bool convolve(const scalar_t* input, const scalar_t* weight, bool flipped, const scalar_t* bias,
              scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s) {
  using V = Lanes<scalar_t>;
  constexpr int64_t L = V::kLanes;
  const Plan plan = Plan::of<scalar_t>(
      batch, s.out_h, s.out_w, s.channels, s.out_channels,
      winograd_thread_chunks<scalar_t>(batch, s.out_h, s.out_w, s.channels, s.out_channels)
          ? kWinogradThreadChunkBytes
          : kChunkBytes);
  const int64_t taps = 9 * s.channels;
  const WeightBuffers<scalar_t> buffers(plan);
  scalar_t *const transposed = buffers.taps, *const u = buffers.weight;
  const int64_t cp = plan.cp;
  std::atomic<bool> finite{true};
  for (int64_t g = 0; g < groups; ++g) {
    const Planes<scalar_t> in{input + g * s.input_block(), groups * s.input_block(),
                              s.in_h * s.in_w, s.channels, s.in_h, s.in_w};
    for (int64_t k0 = 0; k0 < s.out_channels; k0 += plan.block) {
      const int64_t count = std::min(plan.block, s.out_channels - k0);
      // U[xi][k][c] = (G g G^T)[xi] of this block's weights, turned [k][tap][c] first
      const scalar_t* group_weight = weight + g * s.weight_block();
      at::parallel_for(0, count, grain(cp * kPoints * 4, kConvTask), [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
          if (!flipped)
            simd::transpose(group_weight + (k0 + k) * taps, 9, transposed + k * 9 * cp, cp, s.channels, 9);
          else  // tap 8 - t of (k, c) is the forward's tap t of output channel c, channel k
            simd::transpose(group_weight + (k0 + k) * 9, s.out_channels * 9,
                            transposed + (k * 9 + 8) * cp, -cp, s.channels, 9);
          for (int64_t c = 0; c < cp; c += L) {
            typename V::type w[3][3], t[4][4];
            for (int i = 0; i < 3; ++i)
              for (int j = 0; j < 3; ++j) w[i][j] = V::load(transposed + (k * 9 + i * 3 + j) * cp + c);
            sandwich<scalar_t, 4, 3, kG>(w, t);
            for (int a = 0; a < 4; ++a)
              for (int b = 0; b < 4; ++b) V::store(u + ((a * 4 + b) * plan.bp + k) * cp + c, t[a][b]);
          }
        }
      });
      // a chunk: its tiles transformed, 16 products, the inverse; on the threads in turn, or,
      // given chunks enough for each thread, a chunk on each thread (no fork a step)
      const auto run_chunk = [&](int64_t chunk) {
        const int64_t first = chunk * plan.per_chunk, last = std::min(plan.rows, first + plan.per_chunk);
        const int64_t tiles = (last - first) * plan.tiles_w;
        const ChunkBuffers<scalar_t> chunk_buffers(plan);  // this thread's
        scalar_t *const v = chunk_buffers.tiles, *const m = chunk_buffers.products;
        const int64_t ldm = chunk_buffers.ldm;
        over_rows(first, last, plan.tiles_w * cp * kPoints, [&](int64_t r0, int64_t r1) {
          transform_input(in, s.pad_h, s.pad_w, plan.tiles_h, plan.tiles_w, first, r0, r1,
                          s.channels * ldm, ldm, v);
        });
        // M[xi] (count x tiles) = U[xi] (count x channels) V[xi] (channels x tiles)
        over_points([&](int64_t xi) {
          gemm::gemm(count, tiles, s.channels, gemm::Strided<scalar_t>{u + xi * plan.bp * cp, cp, 1},
                     gemm::Strided<scalar_t>{v + xi * s.channels * ldm, ldm, 1}, m + xi * plan.bp * ldm, ldm);
        });
        over_rows(first, last, plan.tiles_w * count * kPoints, [&](int64_t r0, int64_t r1) {
          if (!inverse_tiles(m, plan.bp * ldm, ldm, bias ? bias + g * s.out_channels + k0 : nullptr,
                             output + (g * s.out_channels + k0) * s.positions(), groups * s.output_block(),
                             s.positions(), count, s.out_h, s.out_w, plan.tiles_h, plan.tiles_w, first, r0, r1))
            finite.store(false, std::memory_order_relaxed);
        });
      };
      const int64_t chunks = plan.chunks();
      if (chunks >= 2 * at::get_num_threads() && !at::in_parallel_region())
        at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
          for (int64_t chunk = begin; chunk < end; ++chunk) run_chunk(chunk);
        });
      else
        for (int64_t chunk = 0; chunk < chunks; ++chunk) run_chunk(chunk);
    }
  }
  return finite.load();
}

}  // namespace

template <typename scalar_t>
bool winograd_thread_chunks(int64_t batch, int64_t out_h, int64_t out_w, int64_t channels,
                            int64_t out_channels) {
  if (!winograd_small_weight<scalar_t>(channels, out_channels)) return false;
  const Plan small =
      Plan::of<scalar_t>(batch, out_h, out_w, channels, out_channels, kWinogradThreadChunkBytes);
  return small.chunks() >= kWinogradThreadChunks;
}

template <typename scalar_t>
void winograd_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                      scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s) {
  if (!convolve(input, weight, /*flipped=*/false, bias, output, batch, groups, s))
    im2col_forward(input, weight, bias, output, batch, groups, s);
}

template <typename scalar_t>
void winograd_grad_input(const scalar_t* grad_output, const scalar_t* weight,
                         scalar_t* grad_input, int64_t batch, int64_t groups, const ConvShape& s) {
  // the forward of grad_output padded by 2 - pad, the weight flipped and its channels swapped
  const ConvShape t{s.out_channels, s.out_h, s.out_w, s.channels, s.in_h, s.in_w, 3, 3, 1, 1,
                    2 - s.pad_h, 2 - s.pad_w, 1, 1};
  if (!convolve(grad_output, weight, /*flipped=*/true, static_cast<const scalar_t*>(nullptr),
                grad_input, batch, groups, t))
    im2col_grad_input(grad_output, weight, grad_input, batch, groups, s);
}

template <typename scalar_t>
void winograd_grad_weight(const scalar_t* grad_output, const scalar_t* input,
                          scalar_t* grad_weight, int64_t batch, int64_t groups, const ConvShape& s) {
  using V = Lanes<scalar_t>;
  constexpr int64_t L = V::kLanes;
  // Chunks a thread each, as the forward's (winograd_thread_chunks), each adding its products to
  // the partial dU of its part; a fixed number of parts (by the shape), added in order after.
  const bool thread_chunks =
      winograd_thread_chunks<scalar_t>(batch, s.out_h, s.out_w, s.channels, s.out_channels);
  const Plan plan = Plan::of<scalar_t>(batch, s.out_h, s.out_w, s.channels, s.out_channels,
                                       thread_chunks ? kWinogradThreadChunkBytes : kChunkBytes);
  const int64_t taps = 9 * s.channels, du_size = kPoints * s.channels * plan.bp;
  const int64_t chunks = plan.chunks(), parts = std::min(kWinogradThreadChunks, chunks);
  const WeightBuffers<scalar_t> buffers(plan);
  scalar_t *const sums = buffers.taps, *const du = buffers.weight;
  scalar_t* const partials =
      thread_chunks ? scratch<scalar_t>(Scratch::kWinogradPartials, parts * du_size) : nullptr;
  for (int64_t g = 0; g < groups; ++g) {
    const Planes<scalar_t> in{input + g * s.input_block(), groups * s.input_block(),
                              s.in_h * s.in_w, s.channels, s.in_h, s.in_w};
    for (int64_t k0 = 0; k0 < s.out_channels; k0 += plan.block) {
      const int64_t count = std::min(plan.block, s.out_channels - k0);
      const Planes<scalar_t> grad{grad_output + (g * s.out_channels + k0) * s.positions(),
                                  groups * s.output_block(), s.positions(), count, s.out_h, s.out_w};
      // a chunk's tiles transformed and their products added to `into`: on this thread, or, where
      // `shared`, spread over the threads
      const auto add_chunk = [&](int64_t chunk, scalar_t* into, bool shared) {
        const int64_t first = chunk * plan.per_chunk, last = std::min(plan.rows, first + plan.per_chunk);
        const int64_t tiles = (last - first) * plan.tiles_w;
        const ChunkBuffers<scalar_t> chunk_buffers(plan);  // this thread's
        scalar_t *const v = chunk_buffers.tiles, *const dm = chunk_buffers.products;
        const auto transform = [&](int64_t r0, int64_t r1) {
          transform_input(in, s.pad_h, s.pad_w, plan.tiles_h, plan.tiles_w, first, r0, r1,
                          s.channels * chunk_buffers.ldm, chunk_buffers.ldm, v);
          transform_tiles<scalar_t, 2, kA>(grad, 0, 0, plan.tiles_h, plan.tiles_w, first, r0, r1,
                                           plan.bp, tiles * plan.bp, dm);
        };
        // dU[xi] (channels x count) += V[xi]^T dM[xi], the tiles summed in order
        const auto product = [&](int64_t xi) {
          gemm::gemm(s.channels, count, tiles,
                     gemm::Strided<scalar_t>{v + xi * s.channels * chunk_buffers.ldm, chunk_buffers.ldm, 1},
                     gemm::Strided<scalar_t>{dm + xi * tiles * plan.bp, plan.bp, 1},
                     into + xi * s.channels * plan.bp, plan.bp, /*accumulate=*/true);
        };
        if (shared) {
          over_rows(first, last, plan.tiles_w * (plan.cp + plan.bp) * kPoints, transform);
          over_points(product);
        } else {
          transform(first, last);
          for (int64_t xi = 0; xi < kPoints; ++xi) product(xi);
        }
      };
      if (thread_chunks) {
        at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
          for (int64_t part = begin; part < end; ++part) {
            scalar_t* const into = partials + part * du_size;
            std::fill_n(into, du_size, scalar_t(0));
            for (int64_t chunk = part * chunks / parts; chunk < (part + 1) * chunks / parts; ++chunk)
              add_chunk(chunk, into, /*shared=*/false);
          }
        });
        at::parallel_for(0, du_size, grain(parts, kStreamTask), [&](int64_t i0, int64_t i1) {
          std::copy(partials + i0, partials + i1, du + i0);
          for (int64_t part = 1; part < parts; ++part)
            for (int64_t i = i0; i < i1; ++i) du[i] += partials[part * du_size + i];
        });
      } else {
        std::fill_n(du, du_size, scalar_t(0));
        for (int64_t chunk = 0; chunk < chunks; ++chunk) add_chunk(chunk, du, /*shared=*/true);
      }
      // dg = G^T dU G, [tap][k], turned into the weight's [k][tap]
      at::parallel_for(0, s.channels, grain(plan.bp * kPoints * 4, kConvTask), [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t k = 0; k < plan.bp; k += L) {
            typename V::type x[4][4], w[3][3];
            for (int a = 0; a < 4; ++a)
              for (int b = 0; b < 4; ++b)
                x[a][b] = V::load(du + ((a * 4 + b) * s.channels + c) * plan.bp + k);
            sandwich<scalar_t, 3, 4, kGT>(x, w);
            for (int i = 0; i < 3; ++i)
              for (int j = 0; j < 3; ++j) V::store(sums + (c * 9 + i * 3 + j) * plan.bp + k, w[i][j]);
          }
      });
      simd::transpose(sums, plan.bp, grad_weight + (g * s.out_channels + k0) * taps, taps,
                      taps, count);
    }
  }
  if (!all_finite(grad_weight, groups * s.weight_block()))
    im2col_grad_weight(grad_output, input, grad_weight, batch, groups, s);
}

template bool winograd_thread_chunks<float>(int64_t, int64_t, int64_t, int64_t, int64_t);
template bool winograd_thread_chunks<double>(int64_t, int64_t, int64_t, int64_t, int64_t);
LENET_EXT_CONV2D_FORWARD(winograd_forward)
LENET_EXT_CONV2D_GRAD(winograd_grad_input)
LENET_EXT_CONV2D_GRAD(winograd_grad_weight)

}  // namespace lenet_ext::cpu::conv2d
