// max_pool2d's 2x2 algorithm: LeNet's 2x2 windows, stride 2, no padding, every window inside the
// input. Vectors of outputs along a row, each lane's window from two vector loads per input row
// split into even and odd columns by shuffles; the compare masks of the values select the window
// offsets too, so there is no branch on the data. Rows narrower than the narrowest vector take a
// scalar loop with the same selects. Memory: each input cell is read once, each output written
// once (the last block of a row overlaps its neighbour). Threads split planes (N*C).
#include <ATen/Parallel.h>

#include "../parallel.h"
#include "../simd.h"
#include "algorithms.h"

namespace lenet_ext::cpu::max_pool2d {
namespace {

using simd::offset_t;

// 2x2 windows, stride 2, no padding, every window inside the input: one pass, taps in registers.
// The scalar form, for rows narrower than the narrowest vector.
template <typename scalar_t>
void max_pool_row_2x2(const scalar_t* in, scalar_t* out, int64_t* idx, int64_t oh, int64_t width,
                      int64_t out_w) {
  const scalar_t* top = in + 2 * oh * width;
  const scalar_t* bottom = top + width;
  const offset_t<scalar_t> below = width;  // callers make sure width + 1 fits
  for (int64_t ow = 0; ow < out_w; ++ow) {
    scalar_t best = top[2 * ow];
    offset_t<scalar_t> offset = 0;
    bool take = takes_over(top[2 * ow + 1], best);
    best = take ? top[2 * ow + 1] : best;
    offset = take ? 1 : offset;
    take = takes_over(bottom[2 * ow], best);
    best = take ? bottom[2 * ow] : best;
    offset = take ? below : offset;
    take = takes_over(bottom[2 * ow + 1], best);
    best = take ? bottom[2 * ow + 1] : best;
    offset = take ? below + 1 : offset;
    out[ow] = best;
    idx[ow] = 2 * oh * width + 2 * ow + offset;
  }
}

// kLanes 2x2 windows side by side as GCC vectors: AVX-512, AVX2 or SSE, whatever -march allows.
// Two input rows are loaded and split into even and odd columns by shuffles; the compare masks of
// the values (int32 lanes for float, int64 for double) select the window offsets too.
template <typename scalar_t, int kLanes>
struct Windows {
  using Values = simd::Vec<scalar_t, kLanes>;
  using Offsets = simd::Vec<offset_t<scalar_t>, kLanes>;
  using Indices = simd::Vec<int64_t, kLanes>;
  using values = typename Values::type;
  using offsets = typename Offsets::type;
  using indices = typename Indices::type;

  // even and odd cells of the 2 * kLanes cells at p
  static void split(const scalar_t* p, values& even, values& odd) {
    const values low = Values::load(p), high = Values::load(p + kLanes);
    even = __builtin_shuffle(low, high, Offsets::ramp(0, 2));
    odd = __builtin_shuffle(low, high, Offsets::ramp(1, 2));
  }
  // Windows of output columns [ow, ow + kLanes) of output row oh, scanned as torch does.
  static void pool(const scalar_t* plane, scalar_t* out, int64_t* idx, int64_t oh, int64_t ow,
                   int64_t width) {
    const int64_t corner = 2 * oh * width + 2 * ow;
    values best, value, bottom_left, bottom_right;
    split(plane + corner, best, value);
    split(plane + corner + width, bottom_left, bottom_right);
    offsets offset = {};
    auto take = [&](const values& candidate, int64_t candidate_offset) {
      const offsets wins = takes_over(candidate, best);
      best = wins ? candidate : best;
      offset = wins ? offsets{} + offset_t<scalar_t>(candidate_offset) : offset;
    };
    take(value, 1);
    take(bottom_left, width);
    take(bottom_right, width + 1);
    Values::store(out + ow, best);
    Indices::store(idx + ow, corner + Indices::ramp(0, 2) + __builtin_convertvector(offset, indices));
  }
};

// Calls fn(ow) for blocks of kLanes output columns covering [0, out_w): the last block overlaps its
// neighbour rather than running past the row (it recomputes the same values). out_w >= kLanes.
template <int kLanes, typename Fn>
inline void for_each_block(int64_t out_w, Fn fn) {
  for (int64_t ow = 0; ow + kLanes < out_w; ow += kLanes) fn(ow);
  fn(out_w - kLanes);
}

// The widest vector of at most 64 bytes that fits in out_w outputs: its lanes, or 0 if none of
// 16 bytes does (then the scalar loops run).
template <typename scalar_t>
int block_lanes(int64_t out_w) {
  for (int bytes = 64; bytes >= 16; bytes /= 2)
    if (out_w >= bytes / int64_t(sizeof(scalar_t))) return bytes / sizeof(scalar_t);
  return 0;
}

// Runs body.template operator()<kLanes>() for lanes, a value block_lanes returned (not 0).
template <typename scalar_t, typename Body>
inline void with_lanes(int lanes, Body body) {
  switch (lanes * sizeof(scalar_t)) {
    case 64: body.template operator()<64 / sizeof(scalar_t)>(); break;
    case 32: body.template operator()<32 / sizeof(scalar_t)>(); break;
    default: body.template operator()<16 / sizeof(scalar_t)>();
  }
}

template <typename scalar_t, int kLanes>
void max_pool_plane_2x2(const scalar_t* plane, scalar_t* out, int64_t* idx, int64_t out_h,
                        int64_t out_w, int64_t width) {
  for (int64_t oh = 0; oh < out_h; ++oh, out += out_w, idx += out_w) {
    for_each_block<kLanes>(out_w, [&](int64_t ow) {
      Windows<scalar_t, kLanes>::pool(plane, out, idx, oh, ow, width);
    });
  }
}

}  // namespace

template <typename scalar_t>
void two_by_two_forward(const scalar_t* input, scalar_t* output, int64_t* indices, int64_t planes,
                        const PoolAxis& rows, const PoolAxis& cols) {
  const int64_t in_plane = rows.input * cols.input, out_plane = rows.output * cols.output;
  const int lanes = block_lanes<scalar_t>(cols.output);
  at::parallel_for(0, planes, grain(in_plane, kPoolTask), [&](int64_t begin, int64_t end) {
    if (lanes) {
      with_lanes<scalar_t>(lanes, [&]<int kLanes>() {
        for (int64_t plane = begin; plane < end; ++plane)
          max_pool_plane_2x2<scalar_t, kLanes>(input + plane * in_plane, output + plane * out_plane,
                                               indices + plane * out_plane, rows.output,
                                               cols.output, cols.input);
      });
      return;
    }
    for (int64_t plane = begin; plane < end; ++plane)
      for (int64_t oh = 0; oh < rows.output; ++oh) {
        const int64_t at_out = plane * out_plane + oh * cols.output;
        max_pool_row_2x2(input + plane * in_plane, output + at_out, indices + at_out, oh,
                         cols.input, cols.output);
      }
  });
}

LENET_EXT_MAX_POOL2D_FORWARD(two_by_two_forward)

}  // namespace lenet_ext::cpu::max_pool2d
