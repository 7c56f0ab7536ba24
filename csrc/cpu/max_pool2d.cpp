// max_pool2d on CPU. Forward scans each window in torch's order (rows, then columns) and takes a
// value when it is greater than the running max or NaN: ties keep the first cell, the last NaN wins.
// Columns whose window lies inside the input are scanned tap by tap across the whole output row
// (inner loop along output width, selects not branches), so the loop vectorises and the row stays
// in L1; border columns take a scalar loop. LeNet's 2x2/stride 2 has its own path: vectors of
// outputs along a row, each lane's window from two vector loads per input row split into even and
// odd columns (~6x the scalar loop). Backward zeroes a plane's gradient and adds each output
// gradient at its argmax in output order. Threads split planes (N*C), so results are bitwise the
// same for any thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../max_pool2d.h"
#include "parallel.h"
#include "simd.h"

namespace lenet_ext::cpu {
namespace {

using simd::offset_t;

// The pooling arithmetic of one spatial dimension.
struct PoolAxis {
  int64_t input, output, kernel, stride, padding, dilation;

  int64_t start(int64_t o) const { return o * stride - padding; }
  // taps [first_tap, end_tap) of window o fall inside the input
  int64_t first_tap(int64_t o) const { return first_tap_inside(start(o), dilation); }
  int64_t end_tap(int64_t o) const {
    return std::min(kernel, (input - start(o) + dilation - 1) / dilation);
  }
  // outputs [inner_begin, inner_end) have every tap inside the input
  int64_t inner_begin() const { return std::min(output, (padding + stride - 1) / stride); }
  int64_t inner_end() const {
    const int64_t last_start = input - dilated_extent(kernel, dilation);  // largest inner start
    if (last_start + padding < 0) return inner_begin();
    return std::clamp((last_start + padding) / stride + 1, inner_begin(), output);
  }
};

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

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu(const at::Tensor& input,
                                                  at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, bool ceil_mode) {
  const auto shape = check_max_pool2d_args(input, kernel_size, stride, padding, dilation, ceil_mode);
  const PoolAxis rows{input.size(-2), shape[shape.size() - 2], kernel_size[0], stride[0],
                      padding[0], dilation[0]};
  const PoolAxis cols{input.size(-1), shape.back(), kernel_size[1], stride[1], padding[1],
                      dilation[1]};
  auto output = at::empty(shape, input.options());
  auto indices = at::empty(shape, input.options().dtype(at::kLong));
  const int64_t planes = c10::multiply_integers(input.sizes().begin(), input.sizes().end() - 2);
  const int64_t in_plane = rows.input * cols.input, out_plane = rows.output * cols.output;
  const bool lenet_2x2 = kernel_size == at::IntArrayRef{2, 2} && stride == at::IntArrayRef{2, 2} &&
                         padding == at::IntArrayRef{0, 0} && dilation == at::IntArrayRef{1, 1} &&
                         2 * rows.output <= rows.input && 2 * cols.output <= cols.input &&
                         cols.input < std::numeric_limits<int32_t>::max();
  const auto x = input.expect_contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::max_pool2d", [&] {
    const scalar_t* in = x->const_data_ptr<scalar_t>();
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    int64_t* idx = indices.mutable_data_ptr<int64_t>();
    const int lanes = lenet_2x2 ? block_lanes<scalar_t>(cols.output) : 0;
    at::parallel_for(0, planes, grain(in_plane, kPoolTask), [&](int64_t begin, int64_t end) {
      if (lanes) {
        with_lanes<scalar_t>(lanes, [&]<int kLanes>() {
          for (int64_t plane = begin; plane < end; ++plane) {
            max_pool_plane_2x2<scalar_t, kLanes>(in + plane * in_plane, out + plane * out_plane,
                                                 idx + plane * out_plane, rows.output, cols.output,
                                                 cols.input);
          }
        });
        return;
      }
      std::vector<offset_t<scalar_t>> best_offset(lenet_2x2 ? 0 : cols.output);
      for (int64_t plane = begin; plane < end; ++plane) {
        for (int64_t oh = 0; oh < rows.output; ++oh) {
          const int64_t at_out = plane * out_plane + oh * cols.output;
          if (lenet_2x2) {
            max_pool_row_2x2(in + plane * in_plane, out + at_out, idx + at_out, oh, cols.input,
                             cols.output);
          } else {
            max_pool_row(in + plane * in_plane, out + at_out, idx + at_out, best_offset.data(), oh,
                         rows, cols);
          }
        }
      }
    });
  });
  return {output, indices};
}

// Zeroes one plane's gradient and adds each output gradient at its argmax, in output order. False,
// with *bad_index set, if an index lies outside the plane. Pointers come by value: captured by
// reference (as OpenMP's outlined function takes them) they would be reloaded after every store.
template <typename scalar_t>
bool scatter_plane(const scalar_t* grad, const int64_t* where, int64_t out_plane,
                   scalar_t* plane_grad, int64_t in_plane, int64_t* bad_index) {
  std::fill(plane_grad, plane_grad + in_plane, scalar_t(0));
  bool ok = true;
  for (int64_t o = 0; o < out_plane; ++o) {
    // unsigned compare: negative indices fail it too
    if (static_cast<uint64_t>(where[o]) < static_cast<uint64_t>(in_plane)) {
      plane_grad[where[o]] += grad[o];
    } else {
      *bad_index = where[o];
      ok = false;
    }
  }
  return ok;
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                   at::IntArrayRef input_size) {
  check_max_pool2d_backward_args(grad_output, indices, input_size);
  auto grad_input = at::empty(input_size, grad_output.options());
  const int64_t in_plane = input_size[input_size.size() - 2] * input_size.back();
  const int64_t out_plane = grad_output.size(-2) * grad_output.size(-1);
  const int64_t planes = c10::multiply_integers(input_size.begin(), input_size.end() - 2);
  const auto grad = grad_output.expect_contiguous();
  const auto idx = indices.expect_contiguous();
  std::atomic<bool> found_bad_index{false};
  std::atomic<int64_t> bad_index{0};
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "lenet_ext::max_pool2d_backward", [&] {
    const scalar_t* g = grad->const_data_ptr<scalar_t>();
    const int64_t* where = idx->const_data_ptr<int64_t>();
    scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes, grain(in_plane, kPoolTask), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        int64_t bad;
        if (!scatter_plane(g + plane * out_plane, where + plane * out_plane, out_plane,
                           gi + plane * in_plane, in_plane, &bad)) {
          bad_index.store(bad, std::memory_order_relaxed);
          found_bad_index.store(true, std::memory_order_relaxed);
        }
      }
    });
  });
  check_indices_in_plane(found_bad_index.load(), bad_index.load(), in_plane, input_size);
  return grad_input;
}

}  // namespace lenet_ext::cpu
