// max_pool2d's general algorithm: any kernel, stride, padding and dilation. Columns whose window
// lies inside the input are scanned tap by tap across the whole output row (inner loop along
// output width, selects not branches), so the loop vectorises and the row stays in L1; border
// columns take a scalar loop. Memory: each input row is read once per tap row that covers it, from
// L1. Threads split planes (N*C), so results are bitwise the same for any thread count.
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../parallel.h"
#include "../simd.h"
#include "algorithms.h"

namespace lenet_ext::cpu::max_pool2d {
namespace {

using simd::offset_t;

// Offsets of a cell from its window's top-left cell are simd::offset_t, of the value's width (for
// double the select takes SSE4.1: the portable SSE2 build leaves float64 scalar).

// One tap of the window (at `offset`) across `count` output columns whose windows lie inside the
// input. A compile-time stride lets the loads vectorise; 0 means `stride`, known at run time.
template <int64_t kStride, typename scalar_t>
void take_tap(const scalar_t* tap, int64_t stride, offset_t<scalar_t> offset, scalar_t* best,
              offset_t<scalar_t>* best_offset, int64_t count) {
  const int64_t step = kStride ? kStride : stride;
  for (int64_t i = 0; i < count; ++i) {
    const scalar_t value = tap[i * step];
    const bool take = takes_over(value, best[i]);
    best[i] = take ? value : best[i];
    best_offset[i] = take ? offset : best_offset[i];
  }
}

// One output row of a plane, any kernel, stride, padding and dilation. `best_offset` holds out_w.
template <typename scalar_t>
void max_pool_row(const scalar_t* in, scalar_t* out, int64_t* idx, offset_t<scalar_t>* best_offset,
                  int64_t oh, const PoolAxis& rows, const PoolAxis& cols) {
  const int64_t width = cols.input;
  const int64_t kh_begin = rows.first_tap(oh), kh_end = rows.end_tap(oh);
  constexpr scalar_t lowest = -std::numeric_limits<scalar_t>::infinity();

  auto scan_window = [&](int64_t ow) {
    const int64_t kw_begin = cols.first_tap(ow), kw_end = cols.end_tap(ow);
    scalar_t best = lowest;
    int64_t best_cell = (rows.start(oh) + kh_begin * rows.dilation) * width + cols.start(ow) +
                        kw_begin * cols.dilation;
    for (int64_t kh = kh_begin; kh < kh_end; ++kh) {
      const int64_t row = rows.start(oh) + kh * rows.dilation;
      for (int64_t kw = kw_begin; kw < kw_end; ++kw) {
        const int64_t cell = row * width + cols.start(ow) + kw * cols.dilation;
        if (takes_over(in[cell], best)) best = in[cell], best_cell = cell;
      }
    }
    out[ow] = best;
    idx[ow] = best_cell;
  };

  const int64_t inner_begin = cols.inner_begin();
  // offsets within a window must fit offset_t; planes too wide for that take the scalar loop
  const bool offsets_fit = dilated_extent(rows.kernel, rows.dilation) * width <
                           std::numeric_limits<offset_t<scalar_t>>::max();
  const int64_t inner_end = offsets_fit ? cols.inner_end() : inner_begin;
  const int64_t count = inner_end - inner_begin;
  for (int64_t ow = 0; ow < inner_begin; ++ow) scan_window(ow);
  // with no window inside the input, skip the tap loops: cols.kernel may be ~2^31 taps wide
  if (count > 0) {
    std::fill(out + inner_begin, out + inner_end, lowest);
    std::fill(best_offset, best_offset + count, kh_begin * rows.dilation * width);
    // cell of the top-left corner of column inner_begin's window; column ow's is stride further
    const int64_t corner = rows.start(oh) * width + cols.start(inner_begin);
    for (int64_t kh = kh_begin; kh < kh_end; ++kh) {
      for (int64_t kw = 0; kw < cols.kernel; ++kw) {
        const int64_t offset = kh * rows.dilation * width + kw * cols.dilation;
        const scalar_t* tap = in + (corner + offset);
        scalar_t* best = out + inner_begin;
        switch (cols.stride) {
          case 1: take_tap<1>(tap, 1, offset, best, best_offset, count); break;
          case 2: take_tap<2>(tap, 2, offset, best, best_offset, count); break;
          default: take_tap<0>(tap, cols.stride, offset, best, best_offset, count);
        }
      }
    }
    for (int64_t i = 0; i < count; ++i)
      idx[inner_begin + i] = corner + i * cols.stride + best_offset[i];
  }
  for (int64_t ow = inner_end; ow < cols.output; ++ow) scan_window(ow);
}

}  // namespace

template <typename scalar_t>
void general_forward(const scalar_t* input, scalar_t* output, int64_t* indices, int64_t planes,
                     const PoolAxis& rows, const PoolAxis& cols) {
  const int64_t in_plane = rows.input * cols.input, out_plane = rows.output * cols.output;
  at::parallel_for(0, planes, grain(in_plane, kPoolTask), [&](int64_t begin, int64_t end) {
    std::vector<offset_t<scalar_t>> best_offset(cols.output);
    for (int64_t plane = begin; plane < end; ++plane)
      for (int64_t oh = 0; oh < rows.output; ++oh) {
        const int64_t at_out = plane * out_plane + oh * cols.output;
        max_pool_row(input + plane * in_plane, output + at_out, indices + at_out,
                     best_offset.data(), oh, rows, cols);
      }
  });
}

LENET_EXT_MAX_POOL2D_FORWARD(general_forward)

}  // namespace lenet_ext::cpu::max_pool2d
