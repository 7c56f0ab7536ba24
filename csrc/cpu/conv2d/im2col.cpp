// conv2d by im2col + GEMM (gemm.h), the general algorithm: any stride, padding, dilation and
// group. One (image, group) pair a step: the patches of the group's input are unrolled into columns
// [taps = channels * kernel_h * kernel_w, out_h * out_w] (a per-thread buffer, 60-80 KB for LeNet's
// convs, so it stays in L2) and one GEMM weight[group] x columns writes the output planes straight
// into NCHW. grad_input = col2im(weight^T x grad_output); grad_weight = grad_output x columns^T per
// image, summed over images in BatchParts (parallel.h). Traffic: the columns cost taps times the
// input, which at few output channels (LeNet's 6, 16) costs as much as the products.
#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "../gemm.h"
#include "../parallel.h"
#include "algorithms.h"

namespace lenet_ext::cpu::conv2d {
namespace {

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

}  // namespace

template <typename scalar_t>
void im2col_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                    scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s) {
  at::parallel_for(0, batch * groups, grain(s.multiply_adds(), kConvTask), [&](int64_t begin,
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

template <typename scalar_t>
void im2col_grad_input(const scalar_t* grad_output, const scalar_t* weight, scalar_t* grad_input,
                       int64_t batch, int64_t groups, const ConvShape& s) {
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

template <typename scalar_t>
void im2col_grad_weight(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_weight,
                        int64_t batch, int64_t groups, const ConvShape& s) {
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

LENET_EXT_CONV2D_FORWARD(im2col_forward)
LENET_EXT_CONV2D_GRAD(im2col_grad_input)
LENET_EXT_CONV2D_GRAD(im2col_grad_weight)

}  // namespace lenet_ext::cpu::conv2d
