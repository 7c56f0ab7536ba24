// The fused ReLU + 2x2 max-pool pass of LeNet's feature block, over a conv output the conv kernel
// has just written and that is still in cache: ReLU costs no pass over memory and the ReLU'd plane
// is never stored. ReLU is applied to each cell before the max, so output and indices are torch's
// max_pool2d(relu(conv)) bit for bit, ties and NaN included. Backward zeroes each conv-gradient
// plane and stores the output gradient at the argmax where the output passed the ReLU (one pass
// over the plane, in cache). Memory: each conv cell read once, each output written once. Threads
// split planes: bitwise the same for any count.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>

#include "../../shapes.h"
#include "../parallel.h"
#include "../simd.h"
#include "algorithms.h"

namespace lenet_ext::cpu::fused {
namespace {

// L outputs of a row at a time as GCC vectors (AVX with -march=native, SSE without): each input
// row's 2L cells are loaded as two vectors and split into the windows' left and right columns, so
// ReLU, compare and take are vector selects, with no branch on the data (a scalar loop compiles
// to branches, mispredicted on random signs: ~5 ns an input cell).
template <typename scalar_t, typename index_t, int L>
struct Group {
  using offset = simd::offset_t<scalar_t>;  // a compare's mask of the values selects offsets too
  using Values = typename simd::Vec<scalar_t, L>::type;
  using Offsets = typename simd::Vec<offset, L>::type;
  using Indices = typename simd::Vec<int64_t, L>::type;
  using Codes = typename simd::Vec<index_t, L>::type;  // uint8_t index_t

  static Values load(const scalar_t* p) { return simd::Vec<scalar_t, L>::load(p); }
  template <int... I>
  static Values columns(Values a, Values b, std::integer_sequence<int, I...>, int first) {
    return Values{(I < L / 2 ? a[2 * I + first] : b[2 * I - L + first])...};
  }
  static Values left(Values a, Values b) { return columns(a, b, std::make_integer_sequence<int, L>(), 0); }
  static Values right(Values a, Values b) { return columns(a, b, std::make_integer_sequence<int, L>(), 1); }

  // The L windows from column 2 * ow0: upper and lower point at their rows' first cells, out and
  // idx at output ow0; corner is the plane offset of upper[0], conv_w the plane's row length.
  static void pool(const scalar_t* upper, const scalar_t* lower, int64_t conv_w, int64_t corner,
                   scalar_t* out, index_t* idx) {
    constexpr bool kCodes = !std::is_same_v<index_t, int64_t>;
    // a window code is dy * 2 + dx; an index, the cell's offset in the plane
    const offset cell_offsets[4] = {0, 1, static_cast<offset>(kCodes ? 2 : conv_w),
                                    static_cast<offset>(kCodes ? 3 : conv_w + 1)};
    const Values u0 = load(upper), u1 = load(upper + L), l0 = load(lower), l1 = load(lower + L);
    Values cells[4] = {left(u0, u1), right(u0, u1), left(l0, l1), right(l0, l1)};
    for (Values& c : cells) c = relu(c);
    Values best = cells[0];
    Offsets offset = {};
    for (int k = 1; k < 4; ++k) {
      const auto take = takes_over(cells[k], best);
      best = take ? cells[k] : best;
      offset = take ? Offsets{} + cell_offsets[k] : offset;
    }
    std::memcpy(out, &best, sizeof(best));
    if constexpr (kCodes) {
      const Codes code = __builtin_convertvector(offset, Codes);
      std::memcpy(idx, &code, sizeof(code));
    } else {
      Indices cell = __builtin_convertvector(offset, Indices) + corner;
      for (int i = 0; i < L; ++i) cell[i] += 2 * i;
      std::memcpy(idx, &cell, sizeof(cell));
    }
  }
};

// out[ow], idx[ow] for ow < out_w of the windows on rows `top` and `top + conv_w`; `corner` is the
// plane offset of top[0]. Whole groups of 8 windows, and a last group that overlaps the one
// before it (its outputs are stored twice, the same values) rather than a partial one: partial
// groups, copied through a padded buffer, would take most of the pass at LeNet's 14- and 5-wide
// rows.
template <typename scalar_t, typename index_t>
void relu_max_pool_row(const scalar_t* top, int64_t conv_w, int64_t corner, int64_t out_w,
                       scalar_t* out, index_t* idx) {
  const auto groups = [&](auto group, int64_t lanes) {
    for (int64_t ow0 = 0;; ow0 += lanes) {
      ow0 = std::min(ow0, out_w - lanes);
      decltype(group)::pool(top + 2 * ow0, top + conv_w + 2 * ow0, conv_w, corner + 2 * ow0,
                            out + ow0, idx + ow0);
      if (ow0 + lanes == out_w) return;
    }
  };
  if (out_w >= 8) return groups(Group<scalar_t, index_t, 8>{}, 8);
  if (out_w >= 4) return groups(Group<scalar_t, index_t, 4>{}, 4);
  // rows of 1-3 windows: through a zero-padded copy, so that no load leaves the row
  scalar_t padded[2][8] = {};
  std::copy(top, top + 2 * out_w, padded[0]);
  std::copy(top + conv_w, top + conv_w + 2 * out_w, padded[1]);
  scalar_t values[4];
  index_t cells[4];
  Group<scalar_t, index_t, 4>::pool(padded[0], padded[1], conv_w, corner, values, cells);
  std::copy(values, values + out_w, out);
  std::copy(cells, cells + out_w, idx);
}

}  // namespace

template <typename scalar_t, typename index_t>
void relu_max_pool2x2(const scalar_t* conv, scalar_t* output, index_t* indices, int64_t planes,
                      int64_t conv_h, int64_t conv_w) {
  const int64_t out_h = conv_h / 2, out_w = conv_w / 2;
  const int64_t conv_plane = conv_h * conv_w;
  at::parallel_for(0, planes, grain(conv_plane, kPoolTask), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t oh = 0; oh < out_h; ++oh) {
        const int64_t at = (p * out_h + oh) * out_w;
        relu_max_pool_row(conv + p * conv_plane + 2 * oh * conv_w, conv_w, 2 * oh * conv_w, out_w,
                          output + at, indices + at);
      }
  });
}

namespace {

// keep ? value : +0, as a bit mask: written as a select, GCC branches on the sign of each ReLU
// output, which is random, and the mispredictions cost ~10 cycles a window.
template <typename scalar_t>
inline scalar_t kept_if(bool keep, scalar_t value) {
  using bits_t = std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>;
  bits_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  bits &= bits_t(0) - bits_t(keep);
  std::memcpy(&value, &bits, sizeof(bits));
  return value;
}

}  // namespace

template <typename scalar_t, typename index_t>
bool relu_max_pool2x2_backward(const scalar_t* grad_output, const scalar_t* output,
                               const index_t* indices, scalar_t* grad_conv, int64_t planes,
                               int64_t conv_h, int64_t conv_w, int64_t* bad_index) {
  // A plane is zeroed, then each window's gradient (after the ReLU mask) is stored at its argmax:
  // one store per window, no branch on the data. The windows do not overlap, so a store replaces
  // an add as long as every index lies in its own window, which the same loop checks; a plane that
  // fails (only hand-made indices can) is redone as torch's scatter-add, and a window code past 3
  // is refused. Writing whole windows as vectors (eight windows, four masked cells each) would
  // spend its time on the partial groups of LeNet's 14- and 5-wide rows.
  const int64_t out_h = conv_h / 2, out_w = conv_w / 2;
  const int64_t conv_plane = conv_h * conv_w, out_plane = out_h * out_w;
  std::atomic<bool> ok{true};
  std::atomic<int64_t> bad{0};
  at::parallel_for(0, planes, grain(conv_plane, kPoolTask), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      scalar_t* plane_grad = grad_conv + p * conv_plane;
      const scalar_t* grad = grad_output + p * out_plane;
      const scalar_t* out = output + p * out_plane;
      const index_t* idx = indices + p * out_plane;
      std::fill_n(plane_grad, conv_plane, scalar_t(0));
      bool in_windows = true;
      for (int64_t oh = 0; oh < out_h; ++oh)
        for (int64_t ow = 0; ow < out_w; ++ow) {
          const int64_t o = oh * out_w + ow, corner = 2 * (oh * conv_w + ow);
          int64_t at;
          bool inside;
          if constexpr (std::is_same_v<index_t, int64_t>) {
            const uint64_t cell = static_cast<uint64_t>(idx[o]) - static_cast<uint64_t>(corner);
            const uint64_t row = static_cast<uint64_t>(conv_w);  // (unsigned: any index wraps safely)
            inside = (cell == 0) | (cell == 1) | (cell == row) | (cell == row + 1);
            at = inside ? idx[o] : corner;
          } else {  // any code's two low bits name a cell of the window
            const int64_t code = idx[o];
            inside = code < 4;
            at = corner + (code & 1) + (code & 2 ? conv_w : 0);
          }
          in_windows &= inside;
          // the ReLU: y <= 0 (not > 0) blocks, so a NaN output passes
          plane_grad[at] = kept_if(!(out[o] <= scalar_t(0)), grad[o]);
        }
      if (in_windows) continue;
      if constexpr (std::is_same_v<index_t, int64_t>) {
        // Indices made by hand may point anywhere in the plane: torch's scatter-add then.
        std::fill(plane_grad, plane_grad + conv_plane, scalar_t(0));
        for (int64_t o = 0; o < out_plane; ++o) {
          const scalar_t g = out[o] <= scalar_t(0) ? scalar_t(0) : grad[o];
          if (static_cast<uint64_t>(idx[o]) < static_cast<uint64_t>(conv_plane)) {
            plane_grad[idx[o]] += g;
          } else {
            bad.store(idx[o], std::memory_order_relaxed);
            ok.store(false, std::memory_order_relaxed);
          }
        }
      } else {  // a code past 3 names no cell
        for (int64_t o = 0; o < out_plane; ++o)
          if (idx[o] >= 4) bad.store(idx[o], std::memory_order_relaxed);
        ok.store(false, std::memory_order_relaxed);
      }
    }
  });
  *bad_index = bad.load();
  return ok.load();
}

#define LENET_EXT_INSTANTIATE(scalar_t, index_t)                                                \
  template void relu_max_pool2x2(const scalar_t*, scalar_t*, index_t*, int64_t, int64_t, int64_t); \
  template bool relu_max_pool2x2_backward(const scalar_t*, const scalar_t*, const index_t*,       \
                                          scalar_t*, int64_t, int64_t, int64_t, int64_t*);
LENET_EXT_INSTANTIATE(float, int64_t)
LENET_EXT_INSTANTIATE(double, int64_t)
LENET_EXT_INSTANTIATE(float, uint8_t)
LENET_EXT_INSTANTIATE(double, uint8_t)
#undef LENET_EXT_INSTANTIATE

}  // namespace lenet_ext::cpu::fused
