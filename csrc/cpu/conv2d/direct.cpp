// conv2d's direct algorithm, for small stride-1 unpadded convolutions (LeNet's): a group's output
// channels (at most one vector) are the vector lanes, so nothing is unrolled into columns. The
// forward keeps a row segment of up to kMaxRowTile output positions in registers, one vector per
// position, and runs every (c, kh, kw) tap over it: a weight vector load feeds kMaxRowTile FMAs
// whose other operand is an input element broadcast from L1 (no im2col traffic). grad_input is the
// full correlation of grad_output with the flipped kernel, vectorised along an input row (at most
// one vector wide) from a zero-padded copy of grad_output. grad_weight is the forward's product
// with positions as the reduction: grad_output transposed once per image to [position][lane], a
// tile of taps accumulating in registers over the image's positions; it takes kernels 3 wide and
// padding too (a zero-bordered copy of each image), as any layer of at most a vector of output
// channels has them.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../parallel.h"
#include "algorithms.h"

namespace lenet_ext::cpu::conv2d {
namespace {

constexpr int kMaxRowTile = 14;  // accumulators of the forward tile; 28-wide rows split in two

// weight [out_channels, taps] of one group -> [taps][lanes], lanes past out_channels zero
template <typename scalar_t>
void weight_to_lanes(const scalar_t* weight, scalar_t* lanes, const ConvShape& s) {
  constexpr int L = Lanes<scalar_t>::kLanes;
  std::fill(lanes, lanes + s.taps() * L, scalar_t(0));
  for (int64_t oc = 0; oc < s.out_channels; ++oc)
    for (int64_t tap = 0; tap < s.taps(); ++tap) lanes[tap * L + oc] = weight[oc * s.taps() + tap];
}

// R consecutive outputs of one row, all channels: image points at input (oh, ow0), out at (oh, ow0)
// of output channel 0.
template <typename scalar_t, int R>
void forward_row_tile(const scalar_t* image, const scalar_t* weight_lanes,
                      const typename Lanes<scalar_t>::type& init, scalar_t* out,
                      const ConvShape& s) {
  using V = Lanes<scalar_t>;
  constexpr int L = V::kLanes;
  typename V::type acc[R];
  for (int r = 0; r < R; ++r) acc[r] = init;
  const scalar_t* w = weight_lanes;
  for (int64_t c = 0; c < s.channels; ++c)
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      const scalar_t* row = image + (c * s.in_h + kh) * s.in_w;
      if (s.kernel_w == kDirectKernelW) {
        // The kernel row's weights stay in registers and each of the R + KW - 1 inputs is
        // broadcast once for every tap that reads it: a load per ~4 FMAs, where the loop below
        // (one tap at a time, for other kernel widths) loads one per FMA.
        constexpr int KW = kDirectKernelW;
        typename V::type wv[KW];
        for (int kw = 0; kw < KW; ++kw) wv[kw] = V::load(w + kw * L);
        w += KW * L;
#pragma GCC unroll 32
        for (int i = 0; i < R + KW - 1; ++i) {
          const scalar_t input = row[i];
#pragma GCC unroll 8
          for (int kw = 0; kw < KW; ++kw)
            if (i - kw >= 0 && i - kw < R) acc[i - kw] += input * wv[kw];
        }
        continue;
      }
      for (int64_t kw = 0; kw < s.kernel_w; ++kw, w += L) {
        const typename V::type wv = V::load(w);
        // Hidden from the optimiser: it would otherwise carry the R inputs from one kw to the
        // next in registers (shuffles and spills); a broadcast straight from L1 is free.
        const scalar_t* inputs = row + kw;
        asm("" : "+r"(inputs));
        for (int r = 0; r < R; ++r) acc[r] += inputs[r] * wv;
      }
    }
  scalar_t tile[R][L];
  for (int r = 0; r < R; ++r) V::store(tile[r], acc[r]);
  for (int64_t oc = 0; oc < s.out_channels; ++oc)
    for (int r = 0; r < R; ++r) out[oc * s.positions() + r] = tile[r][oc];
}

template <typename scalar_t, int R = kMaxRowTile>
void forward_row_tile_of_width(int64_t width, const scalar_t* image, const scalar_t* weight_lanes,
                               const typename Lanes<scalar_t>::type& init, scalar_t* out,
                               const ConvShape& s) {
  if constexpr (R > 1) {
    if (width < R)
      return forward_row_tile_of_width<scalar_t, R - 1>(width, image, weight_lanes, init, out, s);
  }
  forward_row_tile<scalar_t, R>(image, weight_lanes, init, out, s);
}

constexpr int kMaxChannelTile = 8;

// One input row ih of CB channels: weight_b is [out_channels][kh][kw][channels] from channel c0,
// grad_rows the padded grad_output ([out_channels][out_h][row_stride], ow at column kernel_w - 1
// + ow), grad_input points at (c0, ih).
template <typename scalar_t, int CB>
void grad_input_row(const scalar_t* grad_rows, int64_t row_stride, const scalar_t* weight_b,
                    scalar_t* grad_input, int64_t ih, const ConvShape& s) {
  using V = Lanes<scalar_t>;
  constexpr int L = V::kLanes;
  typename V::type acc[CB] = {};
  const int64_t kh_first = std::max<int64_t>(0, ih - s.out_h + 1);
  const int64_t kh_last = std::min<int64_t>(s.kernel_h - 1, ih);
  for (int64_t oc = 0; oc < s.out_channels; ++oc)
    for (int64_t kh = kh_first; kh <= kh_last; ++kh) {
      const scalar_t* row = grad_rows + (oc * s.out_h + ih - kh) * row_stride + s.kernel_w - 1;
      const scalar_t* w = weight_b + (oc * s.kernel_h + kh) * s.kernel_w * s.channels;
      for (int64_t kw = 0; kw < s.kernel_w; ++kw, w += s.channels) {
        const typename V::type shifted = V::load(row - kw);  // lane iw holds row[iw - kw]
        for (int j = 0; j < CB; ++j) acc[j] += w[j] * shifted;
      }
    }
  const int64_t plane = s.in_h * s.in_w;
  for (int j = 0; j < CB; ++j) {
    scalar_t lanes[L];
    V::store(lanes, acc[j]);
    copy_row(lanes, s.in_w, grad_input + j * plane);
  }
}

template <typename scalar_t, int CB = kMaxChannelTile>
void grad_input_row_of_channels(int64_t channels, const scalar_t* grad_rows, int64_t row_stride,
                                const scalar_t* weight_b, scalar_t* grad_input, int64_t ih,
                                const ConvShape& s) {
  if constexpr (CB > 1) {
    if (channels < CB)
      return grad_input_row_of_channels<scalar_t, CB - 1>(channels, grad_rows, row_stride,
                                                          weight_b, grad_input, ih, s);
  }
  grad_input_row<scalar_t, CB>(grad_rows, row_stride, weight_b, grad_input, ih, s);
}

// ROWS kernel rows x KW taps of one input channel, summed over one image's positions: image
// points at (channel, kernel row kh0) of rows `row_stride` apart, partial at tap (channel, kh0, 0)
// of [taps][lanes].
template <typename scalar_t, int ROWS, int KW>
void grad_weight_tap_tile(const scalar_t* grad_lanes, const scalar_t* image, int64_t row_stride,
                          scalar_t* partial, const ConvShape& s) {
  using V = Lanes<scalar_t>;
  constexpr int L = V::kLanes;
  typename V::type acc[ROWS][KW] = {};
  for (int64_t oh = 0; oh < s.out_h; ++oh)
    for (int64_t ow = 0; ow < s.out_w; ++ow) {
      const typename V::type grad = V::load(grad_lanes + (oh * s.out_w + ow) * L);
      for (int j = 0; j < ROWS; ++j) {
        const scalar_t* x = image + (oh + j) * row_stride + ow;
        asm("" : "+r"(x));  // as in forward_row_tile: broadcast from L1, no register rotation
        for (int kw = 0; kw < KW; ++kw) acc[j][kw] += x[kw] * grad;
      }
    }
  for (int j = 0; j < ROWS; ++j)
    for (int kw = 0; kw < KW; ++kw) {
      scalar_t* p = partial + (j * KW + kw) * L;
      V::store(p, V::load(p) + acc[j][kw]);
    }
}

// One channel's taps, kernel rows a tile of up to 3 (ROWS x KW accumulators).
template <typename scalar_t, int KW>
void grad_weight_channel(const scalar_t* grad_lanes, const scalar_t* image, int64_t row_stride,
                         scalar_t* partial, const ConvShape& s) {
  constexpr int L = Lanes<scalar_t>::kLanes;
  for (int64_t kh0 = 0; kh0 < s.kernel_h;) {
    const int64_t left = s.kernel_h - kh0;
    const int64_t rows = left == 4 ? 2 : std::min<int64_t>(3, left);
    const scalar_t* at = image + kh0 * row_stride;
    scalar_t* tile = partial + kh0 * KW * L;
    if (rows == 3) grad_weight_tap_tile<scalar_t, 3, KW>(grad_lanes, at, row_stride, tile, s);
    else if (rows == 2) grad_weight_tap_tile<scalar_t, 2, KW>(grad_lanes, at, row_stride, tile, s);
    else grad_weight_tap_tile<scalar_t, 1, KW>(grad_lanes, at, row_stride, tile, s);
    kh0 += rows;
  }
}

}  // namespace

template <typename scalar_t>
void direct_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                    scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s) {
  using V = Lanes<scalar_t>;
  constexpr int L = V::kLanes;
  std::vector<scalar_t> weight_lanes(groups * s.taps() * L);
  std::vector<typename V::type> inits(groups);
  for (int64_t g = 0; g < groups; ++g) {
    weight_to_lanes(weight + g * s.weight_block(), weight_lanes.data() + g * s.taps() * L, s);
    scalar_t init[L] = {};
    for (int64_t oc = 0; oc < s.out_channels && bias; ++oc) init[oc] = bias[g * s.out_channels + oc];
    inits[g] = V::load(init);
  }
  const int64_t tiles_per_row = (s.out_w + kMaxRowTile - 1) / kMaxRowTile;
  at::parallel_for(0, batch * groups, grain(s.multiply_adds(), kConvTask), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t g = i % groups;
      const scalar_t* image = input + i * s.input_block();
      scalar_t* out = output + i * s.output_block();
      for (int64_t oh = 0; oh < s.out_h; ++oh)
        for (int64_t t = 0; t < tiles_per_row; ++t) {  // even split: 28 -> 14 + 14
          const int64_t ow0 = t * s.out_w / tiles_per_row;
          const int64_t ow1 = (t + 1) * s.out_w / tiles_per_row;
          forward_row_tile_of_width(ow1 - ow0, image + oh * s.in_w + ow0,
                                    weight_lanes.data() + g * s.taps() * L, inits[g],
                                    out + oh * s.out_w + ow0, s);
        }
    }
  });
}

template <typename scalar_t>
void direct_grad_input(const scalar_t* grad_output, const scalar_t* weight, scalar_t* grad_input,
                       int64_t batch, int64_t groups, const ConvShape& s) {
  constexpr int L = Lanes<scalar_t>::kLanes;
  // weight[oc][c][kh][kw] -> [oc][kh][kw][c] per group: the channels of a tap side by side
  std::vector<scalar_t> weight_b(groups * s.weight_block());
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t oc = 0; oc < s.out_channels; ++oc)
      for (int64_t c = 0; c < s.channels; ++c)
        for (int64_t k = 0; k < s.kernel_h * s.kernel_w; ++k)
          weight_b[g * s.weight_block() + (oc * s.kernel_h * s.kernel_w + k) * s.channels + c] =
              weight[g * s.weight_block() + (oc * s.channels + c) * s.kernel_h * s.kernel_w + k];
  // kernel_w - 1 zeros left of each row, and enough right of it that a vector never leaves it
  const int64_t row_stride = s.kernel_w - 1 + L;
  at::parallel_for(0, batch * groups, grain(s.multiply_adds(), kConvTask), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> grad_rows(s.out_channels * s.out_h * row_stride, scalar_t(0));
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* grad = grad_output + i * s.output_block();
      for (int64_t row = 0; row < s.out_channels * s.out_h; ++row)
        copy_row(grad + row * s.out_w, s.out_w, grad_rows.data() + row * row_stride + s.kernel_w - 1);
      const scalar_t* w = weight_b.data() + (i % groups) * s.weight_block();
      scalar_t* out = grad_input + i * s.input_block();
      for (int64_t c0 = 0; c0 < s.channels; c0 += kMaxChannelTile)
        for (int64_t ih = 0; ih < s.in_h; ++ih)
          grad_input_row_of_channels(std::min<int64_t>(kMaxChannelTile, s.channels - c0),
                                     grad_rows.data(), row_stride, w + c0,
                                     out + (c0 * s.in_h + ih) * s.in_w, ih, s);
    }
  });
}

template <typename scalar_t>
void direct_grad_weight(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_weight,
                        int64_t batch, int64_t groups, const ConvShape& s) {
  constexpr int L = Lanes<scalar_t>::kLanes;
  const int64_t lanes_block = s.taps() * L;  // one group's [taps][lanes]
  const BatchParts parts(batch);
  // at least one part: an empty batch's gradient is its zeros
  std::vector<scalar_t> partials(std::max<int64_t>(parts.count, 1) * groups * lanes_block, scalar_t(0));
  const int64_t part_grain = grain(parts.most_items() * groups * s.multiply_adds(), kConvTask);
  // a padded convolution reads a zero-bordered copy of each image, as an unpadded one
  const int64_t padded_h = s.in_h + 2 * s.pad_h, padded_w = s.in_w + 2 * s.pad_w;
  const bool padded = s.pad_h > 0 || s.pad_w > 0;
  const int64_t row_stride = padded ? padded_w : s.in_w;
  const int64_t plane = padded ? padded_h * padded_w : s.in_h * s.in_w;
  at::parallel_for(0, parts.count, part_grain, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> grad_lanes(s.positions() * L, scalar_t(0));  // lanes >= out_channels stay 0
    std::vector<scalar_t> bordered(padded ? s.channels * padded_h * padded_w : 0, scalar_t(0));
    for (int64_t part = begin; part < end; ++part)
      for (int64_t n = parts.begin(part); n < parts.end(part); ++n)
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t i = n * groups + g;
          simd::transpose(grad_output + i * s.output_block(), s.positions(), grad_lanes.data(), L,
                    s.out_channels, s.positions());
          const scalar_t* image = input + i * s.input_block();
          if (padded) {  // the border stays zero from the allocation
            for (int64_t c = 0; c < s.channels; ++c)
              for (int64_t ih = 0; ih < s.in_h; ++ih)
                copy_row(image + (c * s.in_h + ih) * s.in_w, s.in_w,
                         bordered.data() + c * plane + (ih + s.pad_h) * padded_w + s.pad_w);
            image = bordered.data();
          }
          scalar_t* partial = partials.data() + (part * groups + g) * lanes_block;
          for (int64_t c = 0; c < s.channels; ++c) {
            scalar_t* taps = partial + c * s.kernel_h * s.kernel_w * L;
            if (s.kernel_w == 3)
              grad_weight_channel<scalar_t, 3>(grad_lanes.data(), image + c * plane, row_stride,
                                               taps, s);
            else
              grad_weight_channel<scalar_t, kDirectKernelW>(grad_lanes.data(), image + c * plane,
                                                            row_stride, taps, s);
          }
        }
  });
  // Parts summed into the first, then [taps][lanes] -> [out_channels][taps] by blocks in registers
  // (a scalar gather here costs more than conv2's FMAs at batch 1).
  sum_parts(partials.data(), parts.count, groups * lanes_block, partials.data());
  for (int64_t g = 0; g < groups; ++g)
    simd::transpose(partials.data() + g * lanes_block, L, grad_weight + g * s.weight_block(), s.taps(),
              s.taps(), s.out_channels);
}

LENET_EXT_CONV2D_FORWARD(direct_forward)
LENET_EXT_CONV2D_GRAD(direct_grad_input)
LENET_EXT_CONV2D_GRAD(direct_grad_weight)

}  // namespace lenet_ext::cpu::conv2d
