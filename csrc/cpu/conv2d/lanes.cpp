// conv2d's lanes algorithm, from a vector's worth of images (16 float, 8 double), for 5-wide
// stride-1 unpadded kernels: kLanes images side by side, one vector = one element of kLanes
// images, so every lane is a real product, loop bounds are exact, and all loads are whole vectors.
// Where it wins: conv2's backward (6 -> 16 channels, 14x14): in direct.cpp's layouts grad_input's
// 14-wide rows take 16 lanes and 20 of each row's 70 (position, kw) pairs meet zero padding, and
// grad_weight loads a broadcast for every FMA; and the forward of few output channels (conv1's 6 of
// 16 lanes). A block of kLanes images is turned into that layout once (a kLanes x kLanes register
// transpose per kLanes elements, ~1% of a block's FMAs; a third of conv1's forward, whose output
// is 25 multiply-adds an element), the gradients read it from L2 (~250 KB a block for conv2), and
// the results are turned back. Images past the last block are left to the caller.
#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>

#include "../parallel.h"
#include "algorithms.h"

namespace lenet_ext::cpu::conv2d {
namespace {

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
}  // namespace

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

template int64_t lanes_forward(const float*, const float*, const float*, float*, int64_t, int64_t,
                               const ConvShape&);
template int64_t lanes_forward(const double*, const double*, const double*, double*, int64_t,
                               int64_t, const ConvShape&);
template int64_t lanes_backward(const float*, const float*, const float*, float*, float*, int64_t,
                                int64_t, const ConvShape&);
template int64_t lanes_backward(const double*, const double*, const double*, double*, double*,
                                int64_t, int64_t, const ConvShape&);

}  // namespace lenet_ext::cpu::conv2d
