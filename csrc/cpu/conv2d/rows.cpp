// conv2d's rows algorithm, for few output channels (at most half a vector: conv1's 6), where
// direct.cpp's lanes over output channels would sit mostly idle: a segment of an output row is the
// vector instead. Forward: each output channel keeps one vector per segment in registers, and each
// input row segment, shifted by kw, is loaded once for every channel (weights broadcast from L1);
// segments start at 0, kLanes, ... and the last at out_w - kLanes, so no load leaves its row, and
// overlapping positions are computed twice, identically (conv1 at batch 1: 12 FMAs for 8 loads a
// tap, 28 of 32 lanes useful). grad_weight: an output row (at most two vectors, zero-padded) is the
// vector, and each (channel, tap) accumulates a vector of row partial sums over the part's images,
// folded across lanes once at the end; rows come from zero-padded per-image copies.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../parallel.h"
#include "algorithms.h"

namespace lenet_ext::cpu::conv2d {
namespace {

constexpr int kRowForwardChannels = 8;  // most output channels select.cpp lets through (half of 16 lanes)

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

}  // namespace

template <typename scalar_t>
void rows_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                  scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s) {
  at::parallel_for(0, batch * groups, grain(s.multiply_adds(), kConvTask),
                   [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t g = i % groups;
      row_forward_image(input + i * s.input_block(), weight + g * s.weight_block(),
                        bias ? bias + g * s.out_channels : nullptr, output + i * s.output_block(),
                        s);
    }
  });
}

template <typename scalar_t>
void rows_grad_weight(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_weight,
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
  // folded across lanes kLanes weights at a time (a scalar sum of the lanes of each weight is a
  // large part of conv1's grad_weight at batch 1).
  sum_parts(partials.data(), parts.count, groups * sums_block, partials.data());
  sum_lanes(partials.data(), groups * s.weight_block(), grad_weight);
}

LENET_EXT_CONV2D_FORWARD(rows_forward)
LENET_EXT_CONV2D_GRAD(rows_grad_weight)

}  // namespace lenet_ext::cpu::conv2d
