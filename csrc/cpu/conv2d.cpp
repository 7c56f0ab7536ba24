// conv2d on CPU: im2col + the GEMM of gemm.h, one (image, group) pair per step. The patches of a
// group's input are unrolled into columns [taps = channels * kernel_h * kernel_w, out_h * out_w]
// (a per-thread buffer, 60-80 KB for LeNet's convs, so it stays in L2), and one GEMM
// weight[group] x columns writes that group's output planes straight into NCHW. Backward reuses the
// unrolling: grad_input = col2im(weight^T x grad_output); grad_weight = sum over images of
// grad_output x columns^T, in a fixed order (see conv2d_grad_weight); grad_bias a sum per channel.
// Small stride-1 unpadded convs (LeNet's) take direct kernels instead, chosen by shape (see "Direct
// path" below): at M = 6 or 16 output channels the GEMM's tiles sit half empty and the columns
// cost as much traffic as the products, while a direct loop keeps whole rows in registers. From a
// vector's worth of images (16 float, 8 double), their 5-wide-kernel backward, and the forward of
// those with few output channels, take a block of images as the vector lanes instead ("Batch-lane
// path"): every lane a real product, exact loop bounds; the block is transposed into that layout
// and back (~1 shuffle per 4 elements moved: a few % of conv2's time, a third of conv1's
// forward, whose output is 25 multiply-adds an element).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <tuple>
#include <utility>
#include <vector>

#include "../backward.h"
#include "../conv2d.h"
#include "gemm.h"
#include "kernels.h"
#include "parallel.h"
#include "simd.h"

namespace lenet_ext {
namespace cpu {
namespace {

ConvShape conv_shape(const at::Tensor& input, const at::Tensor& weight,
                     const std::vector<int64_t>& output_shape, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return {weight.size(1),  input.size(2),   input.size(3),
          weight.size(0) / groups, output_shape[2], output_shape[3],
          weight.size(2),  weight.size(3),  stride[0],  stride[1],
          padding[0],      padding[1],      dilation[0], dilation[1]};
}

// The output indices o in [first, last) whose input index o * stride + offset lies in [0, size).
std::pair<int64_t, int64_t> inside(int64_t offset, int64_t stride, int64_t size, int64_t out_size) {
  const auto first_reaching = [&](int64_t bound) {  // smallest o with o * stride + offset >= bound
    const int64_t distance = bound - offset;
    return std::min(out_size, distance <= 0 ? 0 : (distance + stride - 1) / stride);
  };
  return {first_reaching(0), first_reaching(size)};
}

// Calls visit(tap, oh, input_row, iw_offset, ow_first, ow_last) for every row segment of the
// unrolled matrix that reads the image: row `tap`, columns oh * out_w + [ow_first, ow_last),
// reading row input_row (channel * in_h + ih) of the group's input at columns
// ow * stride_w + iw_offset. Every other entry is padding.
template <typename Visit>
void for_each_inside_segment(const ConvShape& s, Visit visit) {
  for (int64_t c = 0; c < s.channels; ++c)
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      const int64_t ih_offset = kh * s.dilation_h - s.pad_h;
      const auto [oh_first, oh_last] = inside(ih_offset, s.stride_h, s.in_h, s.out_h);
      for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
        const int64_t tap = (c * s.kernel_h + kh) * s.kernel_w + kw;
        const int64_t iw_offset = kw * s.dilation_w - s.pad_w;
        const auto [ow_first, ow_last] = inside(iw_offset, s.stride_w, s.in_w, s.out_w);
        for (int64_t oh = oh_first; oh < oh_last; ++oh)
          visit(tap, oh, c * s.in_h + oh * s.stride_h + ih_offset, iw_offset, ow_first, ow_last);
      }
    }
}

// dst[i * dst_stride] = src[i * src_stride] (kAdd: +=) for i < count. Unit strides, the common
// case, are spelled out so that the loop vectorises; the two buffers never overlap.
template <bool kAdd, typename scalar_t>
void move_row(scalar_t* __restrict dst, int64_t dst_stride, const scalar_t* __restrict src,
              int64_t src_stride, int64_t count) {
  if (dst_stride == 1 && src_stride == 1) {
    for (int64_t i = 0; i < count; ++i) dst[i] = kAdd ? dst[i] + src[i] : src[i];
  } else {
    for (int64_t i = 0; i < count; ++i)
      dst[i * dst_stride] = kAdd ? dst[i * dst_stride] + src[i * src_stride] : src[i * src_stride];
  }
}

// columns[tap][oh * out_w + ow] = image[c][ih][iw], or 0 where (ih, iw) is padding; with
// `transposed`, columns[oh * out_w + ow][tap] (what grad_weight's GEMM reads).
template <typename scalar_t>
void im2col(const scalar_t* image, scalar_t* columns, const ConvShape& s, bool transposed = false) {
  // without padding every entry is written below
  if (s.pad_h > 0 || s.pad_w > 0)
    std::fill(columns, columns + s.taps() * s.positions(), scalar_t(0));
  const int64_t tap_stride = transposed ? 1 : s.positions();
  const int64_t position_stride = transposed ? s.taps() : 1;
  for_each_inside_segment(s, [&](int64_t tap, int64_t oh, int64_t input_row, int64_t iw_offset,
                                 int64_t ow_first, int64_t ow_last) {
    move_row<false>(columns + tap * tap_stride + (oh * s.out_w + ow_first) * position_stride,
                    position_stride, image + input_row * s.in_w + ow_first * s.stride_w + iw_offset,
                    s.stride_w, ow_last - ow_first);
  });
}

// The adjoint of im2col: image = 0, then image[c][ih][iw] += columns[tap][oh * out_w + ow], in a
// fixed order.
template <typename scalar_t>
void col2im(const scalar_t* columns, scalar_t* image, const ConvShape& s) {
  std::fill(image, image + s.input_block(), scalar_t(0));
  for_each_inside_segment(s, [&](int64_t tap, int64_t oh, int64_t input_row, int64_t iw_offset,
                                 int64_t ow_first, int64_t ow_last) {
    move_row<true>(image + input_row * s.in_w + ow_first * s.stride_w + iw_offset, s.stride_w,
                   columns + tap * s.positions() + oh * s.out_w + ow_first, 1, ow_last - ow_first);
  });
}

// Direct path for small stride-1 convolutions (LeNet's): the output channels of a group (at most
// one vector's lanes) are the vector lanes, so nothing is unrolled into columns. The forward keeps a
// row segment of up to kMaxRowTile output positions in registers, one vector per position, and runs
// every (c, kh, kw) tap over it: a weight vector load feeds kMaxRowTile FMAs whose other operand is
// an input element broadcast straight from the image (no im2col traffic, full lanes for 16 output
// channels). grad_weight is the same product with positions as the reduction: grad_output is
// transposed once per image to [position][lane], and a tile of taps (two kernel rows) accumulates in
// registers over the image's positions. A vector is gemm.h's: one 512-bit register.
template <typename scalar_t>
using Lanes = simd::Vec<scalar_t>;

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

constexpr int kMaxRowTile = 14;  // accumulators of the forward tile; 28-wide rows split in two
constexpr int64_t kDirectKernelW = 5;  // kernel width the unrolled tap tiles are compiled for

template <typename scalar_t>
bool direct_fits(const ConvShape& s) {
  return s.stride_h == 1 && s.stride_w == 1 && s.dilation_h == 1 && s.dilation_w == 1 &&
         s.pad_h == 0 && s.pad_w == 0 && s.out_channels <= Lanes<scalar_t>::kLanes;
}

template <typename scalar_t>
bool direct_forward_fits(const ConvShape& s) {
  return direct_fits<scalar_t>(s) && 2 * s.out_channels > Lanes<scalar_t>::kLanes;
}

template <typename scalar_t>
bool direct_grad_weight_fits(const ConvShape& s) {
  return direct_fits<scalar_t>(s) && s.kernel_w == kDirectKernelW;
}

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

// Few output channels (conv1's 6: direct_forward would leave 10 of 16 lanes idle): a segment of
// kLanes positions of an output row is the vector, and each output channel of the group keeps one
// per segment in registers. Each input row segment, shifted by kw, is loaded once for every channel
// (the weights broadcast from memory). Segments start at 0, kLanes, ... and the last at
// out_w - kLanes, so no load leaves its row; positions where two overlap are computed twice,
// identically. conv1 at batch 1: 12 FMAs for 8 loads a tap, 28 of 32 lanes useful.
template <typename scalar_t>
bool row_forward_fits(const ConvShape& s) {
  constexpr int L = Lanes<scalar_t>::kLanes;
  return direct_fits<scalar_t>(s) && 2 * s.out_channels <= L && s.out_w >= L;
}

constexpr int kRowForwardChannels = 8;  // most output channels row_forward_fits lets through

// Output row oh, segments at ow0[0, SEGS), OC channels: image at the group's input, weight the
// group's as stored, out at the group's output.
template <typename scalar_t, int OC, int SEGS>
void row_forward_tile(const scalar_t* image, const scalar_t* weight, const scalar_t* bias,
                      scalar_t* out, int64_t oh, const int64_t* ow0, const ConvShape& s) {
  using V = Lanes<scalar_t>;
  typename V::type acc[OC][SEGS];
  for (int oc = 0; oc < OC; ++oc)
    for (int seg = 0; seg < SEGS; ++seg) acc[oc][seg] = typename V::type{} + (bias ? bias[oc] : 0);
  for (int64_t c = 0; c < s.channels; ++c)
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      const scalar_t* row = image + (c * s.in_h + oh + kh) * s.in_w;
      const scalar_t* w = weight + (c * s.kernel_h + kh) * s.kernel_w;
      for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
        typename V::type x[SEGS];
        for (int seg = 0; seg < SEGS; ++seg) x[seg] = V::load(row + ow0[seg] + kw);
        for (int oc = 0; oc < OC; ++oc)
          for (int seg = 0; seg < SEGS; ++seg) acc[oc][seg] += w[oc * s.taps() + kw] * x[seg];
      }
    }
  for (int oc = 0; oc < OC; ++oc)
    for (int seg = 0; seg < SEGS; ++seg)
      V::store(out + oc * s.positions() + oh * s.out_w + ow0[seg], acc[oc][seg]);
}

template <typename scalar_t, int OC = kRowForwardChannels>
void row_forward_image(const scalar_t* image, const scalar_t* weight, const scalar_t* bias,
                       scalar_t* out, const ConvShape& s) {
  if constexpr (OC > 1) {
    if (s.out_channels < OC)
      return row_forward_image<scalar_t, OC - 1>(image, weight, bias, out, s);
  }
  constexpr int L = Lanes<scalar_t>::kLanes;
  const int64_t segments = (s.out_w + L - 1) / L;
  for (int64_t oh = 0; oh < s.out_h; ++oh)
    for (int64_t first = 0; first < segments; first += 2) {
      const int64_t ow0[2] = {std::min(first * L, s.out_w - L),
                              std::min((first + 1) * L, s.out_w - L)};
      if (first + 1 < segments)
        row_forward_tile<scalar_t, OC, 2>(image, weight, bias, out, oh, ow0, s);
      else
        row_forward_tile<scalar_t, OC, 1>(image, weight, bias, out, oh, ow0, s);
    }
}

// The (image, group) pairs from `first` on.
template <typename scalar_t>
void row_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                 scalar_t* output, int64_t first, int64_t batch, int64_t groups,
                 const ConvShape& s) {
  at::parallel_for(first * groups, batch * groups, grain(s.multiply_adds(), kConvTask),
                   [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t g = i % groups;
      row_forward_image(input + i * s.input_block(), weight + g * s.weight_block(),
                        bias ? bias + g * s.out_channels : nullptr, output + i * s.output_block(),
                        s);
    }
  });
}

// ---- Batch-lane path ------------------------------------------------------------------------------
// conv2's backward (6 -> 16 channels, 14x14 -> 10x10) fills only part of the lanes in the layouts
// above: grad_input's 14-wide rows take 16 lanes, and of the 14 x 5 (position, kw) pairs a row
// computes, 50 meet grad_output and 20 meet its zero padding (62% of the FMAs useful);
// grad_weight's tile loads a broadcast for every FMA. With kLanes images side by side instead
// (one vector = one element of kLanes images), every lane is a real product, the loop bounds are
// exact, and both gradients use whole-vector loads only. A block of kLanes images is turned into
// that layout once (grad_output, input: a kLanes x kLanes transpose in registers per kLanes
// elements, ~1% of the block's FMAs), both gradients read it from L2 (~250 KB a block for conv2),
// and grad_input is turned back. Images past the last full block take the kernels above.

// dst[e][lane] = src[lane * stride + e] for e < count: kLanes images' blocks -> interleaved
template <typename scalar_t>
void to_lanes(const scalar_t* src, int64_t stride, int64_t count, scalar_t* dst) {
  simd::transpose(src, stride, dst, Lanes<scalar_t>::kLanes, Lanes<scalar_t>::kLanes, count);
}

// the inverse: dst[lane * stride + e] = src[e][lane]
template <typename scalar_t>
void from_lanes(const scalar_t* src, int64_t count, scalar_t* dst, int64_t stride) {
  simd::transpose(src, Lanes<scalar_t>::kLanes, dst, stride, count, Lanes<scalar_t>::kLanes);
}

// the most accumulators of a tile: 32 registers less the operands in flight
constexpr int kLanesAccumulators = 28;
constexpr int64_t kLanesMaxRow = 14;  // widest row a lane tile holds (at least two channels of it)

template <typename scalar_t>
bool lanes_fit(const ConvShape& s, int64_t batch) {
  return direct_fits<scalar_t>(s) && s.kernel_w == kDirectKernelW && batch >= Lanes<scalar_t>::kLanes;
}

// The forward through lanes where the direct forward leaves lanes idle (few output channels:
// conv1's 6 of 16); with 16 channels it runs at ~75% of the FMA peak already and the transposes
// would cost more than the lanes win.
template <typename scalar_t>
bool lanes_forward_fits(const ConvShape& s, int64_t batch) {
  return lanes_fit<scalar_t>(s, batch) && !direct_forward_fits<scalar_t>(s);
}

// Output row oh, positions ow0 + [0, P), OCB channels from oc0, in registers: each input vector of
// the P + KW - 1 the row segment reads is loaded once per kernel row and feeds every tap and
// channel that reads it, the weights broadcast from memory. x: [channels][in_h][in_w][L], weight:
// the group's as stored, out: [out_channels][out_h][out_w][L].
template <typename scalar_t, int P, int OCB>
void lanes_forward_tile(const scalar_t* x, const scalar_t* weight, const scalar_t* bias,
                        scalar_t* out, int64_t oc0, int64_t oh, int64_t ow0, const ConvShape& s) {
  using V = Lanes<scalar_t>;
  constexpr int L = V::kLanes, KW = kDirectKernelW;
  typename V::type acc[OCB][P];
  for (int j = 0; j < OCB; ++j)
    for (int p = 0; p < P; ++p) acc[j][p] = typename V::type{} + (bias ? bias[oc0 + j] : scalar_t(0));
  for (int64_t c = 0; c < s.channels; ++c)
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      const scalar_t* row = x + ((c * s.in_h + oh + kh) * s.in_w + ow0) * L;
      const scalar_t* w = weight + ((oc0 * s.channels + c) * s.kernel_h + kh) * KW;
#pragma GCC unroll 32
      for (int i = 0; i < P + KW - 1; ++i) {
        const typename V::type x_i = V::load(row + i * L);
        const scalar_t* w_i = w;  // as in lanes_grad_input_row
        asm("" : "+r"(w_i));
#pragma GCC unroll 8
        for (int j = 0; j < OCB; ++j)
#pragma GCC unroll 8
          for (int kw = 0; kw < KW; ++kw)
            if (i - kw >= 0 && i - kw < P) acc[j][i - kw] += w_i[j * s.taps() + kw] * x_i;
      }
    }
  for (int j = 0; j < OCB; ++j)
    for (int p = 0; p < P; ++p)
      V::store(out + (((oc0 + j) * s.out_h + oh) * s.out_w + ow0 + p) * L, acc[j][p]);
}

template <typename scalar_t, int P = kLanesMaxRow>
void lanes_forward_segment(int64_t width, const scalar_t* x, const scalar_t* weight,
                           const scalar_t* bias, scalar_t* out, int64_t oh, int64_t ow0,
                           const ConvShape& s) {
  if constexpr (P > 1) {
    if (width < P)
      return lanes_forward_segment<scalar_t, P - 1>(width, x, weight, bias, out, oh, ow0, s);
  }
  constexpr int OCB = std::max(1, kLanesAccumulators / P);
  int64_t oc0 = 0;
  for (; oc0 + OCB <= s.out_channels; oc0 += OCB)
    lanes_forward_tile<scalar_t, P, OCB>(x, weight, bias, out, oc0, oh, ow0, s);
  for (; oc0 < s.out_channels; ++oc0)
    lanes_forward_tile<scalar_t, P, 1>(x, weight, bias, out, oc0, oh, ow0, s);
}

// The forward of the first batch / kLanes * kLanes images; returns how many images that was.
template <typename scalar_t>
int64_t lanes_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                      scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s) {
  constexpr int L = Lanes<scalar_t>::kLanes;
  const int64_t blocks = batch / L;
  const int64_t segments = (s.out_w + kLanesMaxRow - 1) / kLanesMaxRow;
  at::parallel_for(0, blocks * groups, 1, [&](int64_t begin, int64_t end) {
    const std::unique_ptr<scalar_t[]> x(new scalar_t[s.input_block() * L]);  // all written
    const std::unique_ptr<scalar_t[]> out(new scalar_t[s.output_block() * L]);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task % groups, i = task / groups * L * groups + g;  // lane 0's block
      to_lanes(input + i * s.input_block(), groups * s.input_block(), s.input_block(), x.get());
      for (int64_t oh = 0; oh < s.out_h; ++oh)
        for (int64_t t = 0; t < segments; ++t) {  // even split: 28 -> 14 + 14
          const int64_t ow0 = t * s.out_w / segments, ow1 = (t + 1) * s.out_w / segments;
          lanes_forward_segment(ow1 - ow0, x.get(), weight + g * s.weight_block(),
                                bias ? bias + g * s.out_channels : nullptr, out.get(), oh, ow0, s);
        }
      from_lanes(out.get(), s.output_block(), output + i * s.output_block(),
                 groups * s.output_block());
    }
  });
  return blocks * L;
}

// Input row ih of CB channels from c0, all W = in_w positions in registers (CB * W accumulators):
// for each grad_output row that reaches it, each of its OW vectors is loaded once and feeds the
// KW * CB products it takes part in, the weights broadcast from memory. grad: the group's
// [out_channels][out_h][out_w][L], weight: the group's as stored, out: [channels][in_h][in_w][L].
template <typename scalar_t, int W, int CB>
void lanes_grad_input_row(const scalar_t* grad, const scalar_t* weight, scalar_t* out, int64_t c0,
                          int64_t ih, const ConvShape& s) {
  using V = Lanes<scalar_t>;
  constexpr int L = V::kLanes, KW = kDirectKernelW, OW = W - KW + 1;
  typename V::type acc[CB][W] = {};
  const int64_t kh_first = std::max<int64_t>(0, ih - s.out_h + 1);
  const int64_t kh_last = std::min<int64_t>(s.kernel_h - 1, ih);
  for (int64_t oc = 0; oc < s.out_channels; ++oc)
    for (int64_t kh = kh_first; kh <= kh_last; ++kh) {
      const scalar_t* g = grad + (oc * s.out_h + ih - kh) * OW * L;
      const scalar_t* w = weight + ((oc * s.channels + c0) * s.kernel_h + kh) * KW;
#pragma GCC unroll 16
      for (int ow = 0; ow < OW; ++ow) {
        const typename V::type g_ow = V::load(g + ow * L);
        // as in forward_row_tile: each weight a broadcast from L1, not one of CB * KW registers
        const scalar_t* w_ow = w;
        asm("" : "+r"(w_ow));
#pragma GCC unroll 8
        for (int j = 0; j < CB; ++j)
#pragma GCC unroll 8
          for (int kw = 0; kw < KW; ++kw)
            acc[j][ow + kw] += w_ow[j * s.kernel_h * KW + kw] * g_ow;
      }
    }
  for (int j = 0; j < CB; ++j)
    for (int iw = 0; iw < W; ++iw) V::store(out + (((c0 + j) * s.in_h + ih) * W + iw) * L, acc[j][iw]);
}

template <typename scalar_t, int W>
void lanes_grad_input_of_width(const scalar_t* grad, const scalar_t* weight, scalar_t* out,
                               const ConvShape& s) {
  constexpr int CB = std::max(1, kLanesAccumulators / W);
  int64_t c0 = 0;
  for (; c0 + CB <= s.channels; c0 += CB)
    for (int64_t ih = 0; ih < s.in_h; ++ih) lanes_grad_input_row<scalar_t, W, CB>(grad, weight, out, c0, ih, s);
  for (; c0 < s.channels; ++c0)
    for (int64_t ih = 0; ih < s.in_h; ++ih) lanes_grad_input_row<scalar_t, W, 1>(grad, weight, out, c0, ih, s);
}

template <typename scalar_t, int W = kLanesMaxRow>
void lanes_grad_input(const scalar_t* grad, const scalar_t* weight, scalar_t* out,
                      const ConvShape& s) {
  if constexpr (W > kDirectKernelW) {
    if (s.in_w < W) return lanes_grad_input<scalar_t, W - 1>(grad, weight, out, s);
  }
  lanes_grad_input_of_width<scalar_t, W>(grad, weight, out, s);
}

// OCB output channels from oc0 x the KW taps of kernel row kh of channel c, over all positions of
// kLanes images: sums [out_channels][taps][L] += per-lane sums. x: [channels][in_h][in_w][L].
template <typename scalar_t, int OCB>
void lanes_grad_weight_tile(const scalar_t* grad, const scalar_t* x, scalar_t* sums, int64_t oc0,
                            int64_t c, int64_t kh, const ConvShape& s) {
  using V = Lanes<scalar_t>;
  constexpr int L = V::kLanes, KW = kDirectKernelW;
  typename V::type acc[OCB][KW] = {};
  for (int64_t oh = 0; oh < s.out_h; ++oh) {
    const scalar_t* x_row = x + ((c * s.in_h + oh + kh) * s.in_w) * L;
    const scalar_t* g_row = grad + (oc0 * s.out_h + oh) * s.out_w * L;
    for (int64_t ow = 0; ow < s.out_w; ++ow) {
      typename V::type x_k[KW];
      for (int kw = 0; kw < KW; ++kw) x_k[kw] = V::load(x_row + (ow + kw) * L);
      for (int j = 0; j < OCB; ++j) {
        const typename V::type g = V::load(g_row + (j * s.positions() + ow) * L);
        for (int kw = 0; kw < KW; ++kw) acc[j][kw] += g * x_k[kw];
      }
    }
  }
  for (int j = 0; j < OCB; ++j)
    for (int kw = 0; kw < KW; ++kw) {
      scalar_t* p = sums + ((oc0 + j) * s.taps() + (c * s.kernel_h + kh) * KW + kw) * L;
      V::store(p, V::load(p) + acc[j][kw]);
    }
}

template <typename scalar_t>
void lanes_grad_weight(const scalar_t* grad, const scalar_t* x, scalar_t* sums, const ConvShape& s) {
  // 4 x 5 accumulators, 5 input vectors, one grad vector. Output channels outermost: a tile's
  // grad_output (conv2: 25 KB) stays in L1 for all its (c, kh) passes, and one channel's input
  // (12 KB) for its kernel rows.
  constexpr int64_t kOcTile = 4;
  for (int64_t oc0 = 0; oc0 < s.out_channels; oc0 += kOcTile)
    for (int64_t c = 0; c < s.channels; ++c)
      for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
        switch (std::min(kOcTile, s.out_channels - oc0)) {
          case 4: lanes_grad_weight_tile<scalar_t, 4>(grad, x, sums, oc0, c, kh, s); break;
          case 3: lanes_grad_weight_tile<scalar_t, 3>(grad, x, sums, oc0, c, kh, s); break;
          case 2: lanes_grad_weight_tile<scalar_t, 2>(grad, x, sums, oc0, c, kh, s); break;
          default: lanes_grad_weight_tile<scalar_t, 1>(grad, x, sums, oc0, c, kh, s); break;
        }
      }
}

// out[k] = the sum of sums[k]'s kLanes lanes for k < count, kLanes at a time by gemm.h's fold
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

// grad_input and/or grad_weight of the first batch / kLanes * kLanes images; returns how many
// images that was. grad_weight's blocks are summed in BatchParts (parallel.h) (fixed
// by the batch), each part's lanes folded at its end, and the parts added in order.
template <typename scalar_t>
int64_t lanes_backward(const scalar_t* grad_output, const scalar_t* input, const scalar_t* weight,
                       scalar_t* grad_input, scalar_t* grad_weight, int64_t batch, int64_t groups,
                       const ConvShape& s) {
  constexpr int L = Lanes<scalar_t>::kLanes;
  const int64_t blocks = batch / L;
  const BatchParts parts(blocks);
  const int64_t weight_numel = groups * s.weight_block();
  std::unique_ptr<scalar_t[]> partials(grad_weight ? new scalar_t[parts.count * weight_numel] : nullptr);
  at::parallel_for(0, parts.count, 1, [&](int64_t begin, int64_t end) {
    // not zeroed: to_lanes and the grad_input rows write every element; the sums are zeroed per part
    const std::unique_ptr<scalar_t[]> grad(new scalar_t[s.output_block() * L]);
    const std::unique_ptr<scalar_t[]> lanes(new scalar_t[s.input_block() * L]);  // input, grad_input
    const std::unique_ptr<scalar_t[]> sums(grad_weight ? new scalar_t[weight_numel * L] : nullptr);
    for (int64_t part = begin; part < end; ++part) {
      if (grad_weight) std::fill(sums.get(), sums.get() + weight_numel * L, scalar_t(0));
      for (int64_t block = parts.begin(part); block < parts.end(part); ++block)
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t i = block * L * groups + g;  // lane 0's (image, group)
          to_lanes(grad_output + i * s.output_block(), groups * s.output_block(), s.output_block(),
                   grad.get());
          if (grad_input) {
            lanes_grad_input(grad.get(), weight + g * s.weight_block(), lanes.get(), s);
            from_lanes(lanes.get(), s.input_block(), grad_input + i * s.input_block(),
                       groups * s.input_block());
          }
          if (grad_weight) {
            to_lanes(input + i * s.input_block(), groups * s.input_block(), s.input_block(),
                     lanes.get());
            lanes_grad_weight(grad.get(), lanes.get(), sums.get() + g * s.weight_block() * L, s);
          }
        }
      if (grad_weight) sum_lanes(sums.get(), weight_numel, partials.get() + part * weight_numel);
    }
  });
  if (grad_weight) sum_parts(partials.get(), parts.count, weight_numel, grad_weight);
  return blocks * L;
}

}  // namespace

// Block i = image * groups + group of input, output and their gradients is contiguous in NCHW.
template <typename scalar_t>
void conv2d_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                    scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s) {
  if (direct_forward_fits<scalar_t>(s))
    return direct_forward(input, weight, bias, output, batch, groups, s);
  // images past the last block of lanes, or all of them, through row_forward or im2col and the GEMM
  const int64_t done = lanes_forward_fits<scalar_t>(s, batch)
                           ? lanes_forward(input, weight, bias, output, batch, groups, s)
                           : 0;
  if (row_forward_fits<scalar_t>(s))
    return row_forward(input, weight, bias, output, done, batch, groups, s);
  at::parallel_for(done * groups, batch * groups, grain(s.multiply_adds(), kConvTask), [&](int64_t begin,
                                                                                   int64_t end) {
    std::vector<scalar_t> columns(s.taps() * s.positions());
    for (int64_t i = begin; i < end; ++i) {
      const int64_t group = i % groups;
      scalar_t* out = output + i * s.output_block();
      im2col(input + i * s.input_block(), columns.data(), s);
      gemm(weight + group * s.weight_block(), columns.data(), static_cast<const scalar_t*>(nullptr),
           out, s.out_channels, s.taps(), s.positions());
      if (bias == nullptr) continue;
      for (int64_t oc = 0; oc < s.out_channels; ++oc) {
        const scalar_t channel_bias = bias[group * s.out_channels + oc];
        for (int64_t p = 0; p < s.positions(); ++p) out[oc * s.positions() + p] += channel_bias;
      }
    }
  });
}

namespace {

// grad_input of the direct path as the full correlation of grad_output with the flipped kernel,
// vectorised along an input row (at most one vector wide): each grad_output row segment, shifted
// by kw, is loaded once from a zero-padded copy and feeds every input channel of the block (the
// weight a broadcast from memory). Kernel rows that fall outside grad_output are skipped.
template <typename scalar_t>
bool direct_grad_input_fits(const ConvShape& s) {
  return direct_fits<scalar_t>(s) && s.in_w <= Lanes<scalar_t>::kLanes;
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
void conv2d_grad_input(const scalar_t* grad_output, const scalar_t* weight, scalar_t* grad_input,
                       int64_t batch, int64_t groups, const ConvShape& s) {
  // The direct path multiplies weights by grad_output's zero padding, where the general path
  // multiplies nothing; the two agree only if 0 * weight is 0.
  if (direct_grad_input_fits<scalar_t>(s) &&
      std::all_of(weight, weight + groups * s.weight_block(),
                  [](scalar_t w) { return std::isfinite(w); }))
    return direct_grad_input(grad_output, weight, grad_input, batch, groups, s);
  // weight^T per group, [taps, out_channels], so that the GEMM reads contiguous rows
  std::vector<scalar_t> weight_t(groups * s.weight_block());
  for (int64_t g = 0; g < groups; ++g)
    simd::transpose(weight + g * s.weight_block(), s.taps(), weight_t.data() + g * s.weight_block(),
              s.out_channels, s.out_channels, s.taps());
  const int64_t steps = batch * groups;
  at::parallel_for(0, steps, grain(s.multiply_adds(), kConvTask), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> columns(s.taps() * s.positions());
    for (int64_t i = begin; i < end; ++i) {
      gemm(weight_t.data() + (i % groups) * s.weight_block(), grad_output + i * s.output_block(),
           static_cast<const scalar_t*>(nullptr), columns.data(), s.taps(), s.out_channels,
           s.positions());
      col2im(columns.data(), grad_input + i * s.input_block(), s);
    }
  });
}

// ROWS kernel rows x kDirectKernelW taps of one input channel, summed over one image's positions:
// image points at (channel, kernel row kh0), partial at tap (channel, kh0, 0) of [taps][lanes].
template <typename scalar_t, int ROWS>
void grad_weight_tap_tile(const scalar_t* grad_lanes, const scalar_t* image, scalar_t* partial,
                          const ConvShape& s) {
  using V = Lanes<scalar_t>;
  constexpr int L = V::kLanes;
  constexpr int KW = kDirectKernelW;
  typename V::type acc[ROWS][KW] = {};
  for (int64_t oh = 0; oh < s.out_h; ++oh)
    for (int64_t ow = 0; ow < s.out_w; ++ow) {
      const typename V::type grad = V::load(grad_lanes + (oh * s.out_w + ow) * L);
      for (int j = 0; j < ROWS; ++j) {
        const scalar_t* x = image + (oh + j) * s.in_w + ow;
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

template <typename scalar_t>
void direct_grad_weight(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_weight,
                        int64_t batch, int64_t groups, const ConvShape& s) {
  constexpr int L = Lanes<scalar_t>::kLanes;
  const int64_t lanes_block = s.taps() * L;  // one group's [taps][lanes]
  const BatchParts parts(batch);
  // at least one part: an empty batch's gradient is its zeros
  std::vector<scalar_t> partials(std::max<int64_t>(parts.count, 1) * groups * lanes_block, scalar_t(0));
  const int64_t part_grain = grain(parts.most_items() * groups * s.multiply_adds(), kConvTask);
  at::parallel_for(0, parts.count, part_grain, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> grad_lanes(s.positions() * L, scalar_t(0));  // lanes >= out_channels stay 0
    for (int64_t part = begin; part < end; ++part)
      for (int64_t n = parts.begin(part); n < parts.end(part); ++n)
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t i = n * groups + g;
          simd::transpose(grad_output + i * s.output_block(), s.positions(), grad_lanes.data(), L,
                    s.out_channels, s.positions());
          scalar_t* partial = partials.data() + (part * groups + g) * lanes_block;
          for (int64_t c = 0; c < s.channels; ++c)
            for (int64_t kh0 = 0; kh0 < s.kernel_h;) {
              const int64_t left = s.kernel_h - kh0;
              const int64_t rows = left == 4 ? 2 : std::min<int64_t>(3, left);
              const scalar_t* image = input + i * s.input_block() + (c * s.in_h + kh0) * s.in_w;
              scalar_t* tile = partial + (c * s.kernel_h + kh0) * kDirectKernelW * L;
              if (rows == 3) grad_weight_tap_tile<scalar_t, 3>(grad_lanes.data(), image, tile, s);
              else if (rows == 2) grad_weight_tap_tile<scalar_t, 2>(grad_lanes.data(), image, tile, s);
              else grad_weight_tap_tile<scalar_t, 1>(grad_lanes.data(), image, tile, s);
              kh0 += rows;
            }
        }
  });
  // Parts summed into the first, then [taps][lanes] -> [out_channels][taps] by blocks in registers
  // (a scalar gather here costs 4-5 µs, more than conv2's FMAs at batch 1).
  sum_parts(partials.data(), parts.count, groups * lanes_block, partials.data());
  for (int64_t g = 0; g < groups; ++g)
    simd::transpose(partials.data() + g * lanes_block, L, grad_weight + g * s.weight_block(), s.taps(),
              s.taps(), s.out_channels);
}

// grad_weight for few output channels (at most half the lanes, conv1's 6), where lanes over
// output channels would sit mostly idle: an output row (at most two vectors, zero-padded) is the
// vector instead, and each (channel, tap) accumulates a vector of row partial sums over the rows of
// the part's images, reduced across lanes once at the end. Rows come from zero-padded per-image
// copies, so the padding lanes hold 0 * 0 and vectors never read past a buffer.
template <typename scalar_t>
bool row_grad_weight_fits(const ConvShape& s) {
  constexpr int L = Lanes<scalar_t>::kLanes;
  return direct_fits<scalar_t>(s) && 2 * s.out_channels <= L && s.out_w <= 2 * L &&
         s.kernel_w == kDirectKernelW;
}

// OCB output channels x kDirectKernelW taps of kernel row kh, over every output row of one image:
// grad_rows [out_channels][out_h][2L] from channel oc0, image_rows [channels * in_h][row_stride]
// from (c, kh), sums [out_channels][taps][L] at (oc0, tap (c, kh, 0)).
template <typename scalar_t, int OCB>
void row_grad_weight_tile(const scalar_t* grad_rows, const scalar_t* image_rows,
                          int64_t row_stride, scalar_t* sums, const ConvShape& s) {
  using V = Lanes<scalar_t>;
  constexpr int L = V::kLanes;
  constexpr int KW = kDirectKernelW;
  typename V::type acc[OCB][KW] = {};
  // Lanes past the row's end meet grad_output's zero padding, but 0 * inf is NaN: they must add
  // exactly nothing, so the inputs there are masked to zero too.
  typename V::type keep0, keep1;
  for (int lane = 0; lane < L; ++lane)
    keep0[lane] = lane < s.out_w ? scalar_t(1) : scalar_t(0),
    keep1[lane] = lane + L < s.out_w ? scalar_t(1) : scalar_t(0);
  for (int64_t oh = 0; oh < s.out_h; ++oh) {
    typename V::type grad[OCB][2];
    for (int j = 0; j < OCB; ++j) {
      const scalar_t* row = grad_rows + (j * s.out_h + oh) * 2 * L;
      grad[j][0] = V::load(row), grad[j][1] = V::load(row + L);
    }
    const scalar_t* x = image_rows + oh * row_stride;
    for (int kw = 0; kw < KW; ++kw) {
      typename V::type x0 = V::load(x + kw), x1 = V::load(x + kw + L);
      x0 = keep0 != 0 ? x0 : 0, x1 = keep1 != 0 ? x1 : 0;
#ifdef __AVX512F__  // one (unaligned) load each, not one folded into every FMA; only AVX-512
      asm("" : "+v"(x0), "+v"(x1));  // holds a 64-byte vector in one register
#endif
      for (int j = 0; j < OCB; ++j) {  // two FMAs (a sum of products would be mul, fma, add)
        acc[j][kw] += grad[j][0] * x0;
        acc[j][kw] += grad[j][1] * x1;
      }
    }
  }
  for (int j = 0; j < OCB; ++j)
    for (int kw = 0; kw < KW; ++kw) {
      scalar_t* p = sums + (j * s.taps() + kw) * L;
      V::store(p, V::load(p) + acc[j][kw]);
    }
}

template <typename scalar_t>
void row_grad_weight(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_weight,
                     int64_t batch, int64_t groups, const ConvShape& s) {
  constexpr int L = Lanes<scalar_t>::kLanes;
  const int64_t sums_block = s.weight_block() * L;  // one group's [out_channels][taps][lanes]
  const BatchParts parts(batch);
  // at least one part: an empty batch's gradient is its zeros
  std::vector<scalar_t> partials(std::max<int64_t>(parts.count, 1) * groups * sums_block, scalar_t(0));
  const int64_t part_grain = grain(parts.most_items() * groups * s.multiply_adds(), kConvTask);
  const int64_t row_stride = kDirectKernelW - 1 + 2 * L;
  at::parallel_for(0, parts.count, part_grain, [&](int64_t begin, int64_t end) {
    // zero-padded copies; the padding is written once and stays zero
    std::vector<scalar_t> grad_rows(s.out_channels * s.out_h * 2 * L, scalar_t(0));
    std::vector<scalar_t> image_rows(s.channels * s.in_h * row_stride, scalar_t(0));
    for (int64_t part = begin; part < end; ++part)
      for (int64_t n = parts.begin(part); n < parts.end(part); ++n)
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t i = n * groups + g;
          const scalar_t* grad = grad_output + i * s.output_block();
          for (int64_t row = 0; row < s.out_channels * s.out_h; ++row)
            copy_row(grad + row * s.out_w, s.out_w, grad_rows.data() + row * 2 * L);
          const scalar_t* image = input + i * s.input_block();
          for (int64_t row = 0; row < s.channels * s.in_h; ++row)
            copy_row(image + row * s.in_w, s.in_w, image_rows.data() + row * row_stride);
          scalar_t* sums = partials.data() + (part * groups + g) * sums_block;
          for (int64_t oc0 = 0; oc0 < s.out_channels; oc0 += 3)
            for (int64_t c = 0; c < s.channels; ++c)
              for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
                const scalar_t* grad_from = grad_rows.data() + oc0 * s.out_h * 2 * L;
                const scalar_t* image_from = image_rows.data() + (c * s.in_h + kh) * row_stride;
                scalar_t* sums_at = sums + (oc0 * s.taps() + (c * s.kernel_h + kh) * kDirectKernelW) * L;
                const int64_t block = std::min<int64_t>(3, s.out_channels - oc0);
                if (block == 3)
                  row_grad_weight_tile<scalar_t, 3>(grad_from, image_from, row_stride, sums_at, s);
                else if (block == 2)
                  row_grad_weight_tile<scalar_t, 2>(grad_from, image_from, row_stride, sums_at, s);
                else
                  row_grad_weight_tile<scalar_t, 1>(grad_from, image_from, row_stride, sums_at, s);
              }
        }
  });
  // Each weight (g, oc, tap), in grad_weight's order, is its vector summed over the parts, then
  // folded across lanes kLanes weights at a time (a scalar sum of 16 lanes a weight costs ~2.5 µs,
  // a fifth of conv1's grad_weight at batch 1).
  sum_parts(partials.data(), parts.count, groups * sums_block, partials.data());
  sum_lanes(partials.data(), groups * s.weight_block(), grad_weight);
}

template <typename scalar_t>
void conv2d_grad_weight(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_weight,
                        int64_t batch, int64_t groups, const ConvShape& s) {
  if (row_grad_weight_fits<scalar_t>(s))
    return row_grad_weight(grad_output, input, grad_weight, batch, groups, s);
  if (direct_grad_weight_fits<scalar_t>(s))
    return direct_grad_weight(grad_output, input, grad_weight, batch, groups, s);
  const int64_t weight_numel = groups * s.weight_block();
  const BatchParts parts(batch);
  std::vector<scalar_t> partials(parts.count * weight_numel, scalar_t(0));
  const int64_t part_grain = grain(parts.most_items() * groups * s.multiply_adds(), kConvTask);
  at::parallel_for(0, parts.count, part_grain, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> columns_t(s.positions() * s.taps()), product(s.weight_block());
    for (int64_t part = begin; part < end; ++part) {
      for (int64_t n = parts.begin(part); n < parts.end(part); ++n)
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t i = n * groups + g;
          im2col(input + i * s.input_block(), columns_t.data(), s, /*transposed=*/true);
          gemm(grad_output + i * s.output_block(), columns_t.data(),
               static_cast<const scalar_t*>(nullptr), product.data(), s.out_channels,
               s.positions(), s.taps());
          scalar_t* partial = partials.data() + part * weight_numel + g * s.weight_block();
          for (int64_t k = 0; k < s.weight_block(); ++k) partial[k] += product[k];
        }
    }
  });
  sum_parts(partials.data(), parts.count, weight_numel, grad_weight);
}

// Per channel, over images in order; within a plane kLanes interleaved running sums (fixed, so
// the result does not depend on threads) let the additions vectorise. The sums are one GCC vector,
// added whole vectors at a time: a loop of variable width (min(kLanes, left)) does not vectorise
// and runs at ~1 addition a cycle, which for conv1 takes as long as its grad_weight's FMAs.
template <typename scalar_t>
void conv2d_grad_bias(const scalar_t* grad_output, scalar_t* grad_bias, int64_t batch,
                      int64_t channels, int64_t positions) {
  constexpr int64_t kLanes = 16;
  using Sums = typename simd::Vec<scalar_t, kLanes>::type;
  // a grain by work: a grain of one channel would fork a thread even at batch 1 (100 additions a
  // channel for conv2)
  at::parallel_for(0, channels, grain(batch * positions, kConvTask), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      Sums lanes = {};
      for (int64_t n = 0; n < batch; ++n) {
        const scalar_t* plane = grad_output + (n * channels + c) * positions;
        int64_t p0 = 0;
        for (; p0 + kLanes <= positions; p0 += kLanes) {
          Sums values;
          std::memcpy(&values, plane + p0, sizeof(values));
          lanes += values;
        }
        for (int64_t j = 0; p0 + j < positions; ++j) lanes[j] += plane[p0 + j];
      }
      scalar_t sum = 0;
      for (int64_t j = 0; j < kLanes; ++j) sum += lanes[j];
      grad_bias[c] = sum;
    }
  });
}

}  // namespace

template <typename scalar_t>
void conv2d_backward(const scalar_t* grad_output, const scalar_t* input, const scalar_t* weight,
                     scalar_t* grad_input, scalar_t* grad_weight, scalar_t* grad_bias,
                     int64_t batch, int64_t groups, const ConvShape& s) {
  // images whose gradients the batch-lane path took (grad_input only for rows up to 14 wide)
  int64_t done = 0;
  const bool lanes_input = grad_input && s.in_w <= kLanesMaxRow;
  if ((lanes_input || grad_weight) && lanes_fit<scalar_t>(s, batch))
    done = lanes_backward(grad_output, input, weight, lanes_input ? grad_input : nullptr,
                          grad_weight, batch, groups, s);
  const int64_t rest = batch - done;
  const int64_t grad_at = done * groups * s.output_block(), input_at = done * groups * s.input_block();
  if (grad_input && (!lanes_input || done == 0))
    conv2d_grad_input(grad_output, weight, grad_input, batch, groups, s);
  else if (grad_input && rest > 0)
    conv2d_grad_input(grad_output + grad_at, weight, grad_input + input_at, rest, groups, s);
  if (grad_weight && done == 0) {
    conv2d_grad_weight(grad_output, input, grad_weight, batch, groups, s);
  } else if (grad_weight && rest > 0) {  // the images past the last block, added last
    std::vector<scalar_t> rest_grad(groups * s.weight_block());
    conv2d_grad_weight(grad_output + grad_at, input + input_at, rest_grad.data(), rest, groups, s);
    for (size_t k = 0; k < rest_grad.size(); ++k) grad_weight[k] += rest_grad[k];
  }
  if (grad_bias)
    conv2d_grad_bias(grad_output, grad_bias, batch, groups * s.out_channels, s.positions());
}

#define LENET_EXT_INSTANTIATE(scalar_t)                                                       \
  template void conv2d_forward(const scalar_t*, const scalar_t*, const scalar_t*, scalar_t*,     \
                               int64_t, int64_t, const ConvShape&);                             \
  template void conv2d_backward(const scalar_t*, const scalar_t*, const scalar_t*, scalar_t*,    \
                                scalar_t*, scalar_t*, int64_t, int64_t, const ConvShape&);
LENET_EXT_INSTANTIATE(float)
LENET_EXT_INSTANTIATE(double)
#undef LENET_EXT_INSTANTIATE

namespace {

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto output_shape =
      check_conv2d_args(input, weight, bias, stride, padding, dilation, groups);
  const ConvShape s = conv_shape(input, weight, output_shape, stride, padding, dilation, groups);
  auto output = at::empty(output_shape, input.options());
  const auto x = input.expect_contiguous();
  const auto w = weight.expect_contiguous();
  std::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::conv2d", [&] {
    conv2d_forward(x->const_data_ptr<scalar_t>(), w->const_data_ptr<scalar_t>(),
                   optional_data<scalar_t>(b),
                   output.mutable_data_ptr<scalar_t>(), input.size(0), groups, s);
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  check_conv2d_backward_args(grad_output, input, weight, stride, padding, dilation, groups);
  const ConvShape s = conv_shape(input, weight, grad_output.sizes().vec(), stride, padding,
                                 dilation, groups);
  const int64_t batch = input.size(0);
  const auto grad = grad_output.expect_contiguous();
  const auto x = input.expect_contiguous();
  const auto w = weight.expect_contiguous();
  at::Tensor grad_input, grad_weight, grad_bias;
  std::tie(grad_input, grad_weight, grad_bias) = empty_grads(input, weight, output_mask);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::conv2d_backward", [&] {
    conv2d_backward(grad->const_data_ptr<scalar_t>(), x->const_data_ptr<scalar_t>(),
                    w->const_data_ptr<scalar_t>(), data_or_null<scalar_t>(grad_input),
                    data_or_null<scalar_t>(grad_weight), data_or_null<scalar_t>(grad_bias),
                    batch, groups, s);
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

// The emulated-CUDA build registers the CUDA kernels at the CPU key instead
// (csrc/cuda/registration.cpp).
#if !defined(LENET_EXT_CUDA_EMULATED)
TORCH_LIBRARY_IMPL(lenet_ext, CPU, m) {
  m.impl("conv2d", &conv2d_cpu);
  m.impl("conv2d_backward", &conv2d_backward_cpu);
}
#endif

}  // namespace cpu
}  // namespace lenet_ext
