// conv2d's reference kernels: the definition as loop nests, one output (or gradient) element at a
// time, taps outside the input skipped. No vectors, no threads, no reordering: the yardstick the
// tests hold every fast algorithm to. Memory: every tap re-reads input and weight (taps * output
// loads), fine for the test shapes and never selected for speed.
#include "algorithms.h"

namespace lenet_ext::cpu::conv2d {

// The input cell that tap (kh, kw) of output (oh, ow) reads, or -1 where it falls in the padding.
static int64_t input_cell(const ConvShape& s, int64_t oh, int64_t ow, int64_t kh, int64_t kw) {
  const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dilation_h;
  const int64_t iw = ow * s.stride_w - s.pad_w + kw * s.dilation_w;
  return ih < 0 || ih >= s.in_h || iw < 0 || iw >= s.in_w ? -1 : ih * s.in_w + iw;
}

// Calls f(i, oc, c, output position, weight tap, input cell) for every product of the convolution
// of block i = image * groups + group whose input cell lies inside the image.
template <typename F>
static void for_each_product(int64_t blocks, const ConvShape& s, F f) {
  for (int64_t i = 0; i < blocks; ++i)
    for (int64_t oc = 0; oc < s.out_channels; ++oc)
      for (int64_t oh = 0; oh < s.out_h; ++oh)
        for (int64_t ow = 0; ow < s.out_w; ++ow)
          for (int64_t c = 0; c < s.channels; ++c)
            for (int64_t kh = 0; kh < s.kernel_h; ++kh)
              for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
                const int64_t cell = input_cell(s, oh, ow, kh, kw);
                if (cell >= 0)
                  f(i, oc, c, oh * s.out_w + ow, (c * s.kernel_h + kh) * s.kernel_w + kw,
                    c * s.in_h * s.in_w + cell);
              }
}

template <typename scalar_t>
void reference_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                       scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s) {
  for (int64_t i = 0; i < batch * groups; ++i)
    for (int64_t oc = 0; oc < s.out_channels; ++oc)
      for (int64_t p = 0; p < s.positions(); ++p)
        output[i * s.output_block() + oc * s.positions() + p] =
            bias ? bias[i % groups * s.out_channels + oc] : scalar_t(0);
  for_each_product(batch * groups, s, [&](int64_t i, int64_t oc, int64_t, int64_t p, int64_t tap,
                                          int64_t cell) {
    output[i * s.output_block() + oc * s.positions() + p] +=
        weight[i % groups * s.weight_block() + oc * s.taps() + tap] * input[i * s.input_block() + cell];
  });
}

template <typename scalar_t>
void reference_grad_input(const scalar_t* grad_output, const scalar_t* weight,
                          scalar_t* grad_input, int64_t batch, int64_t groups, const ConvShape& s) {
  for (int64_t k = 0; k < batch * groups * s.input_block(); ++k) grad_input[k] = 0;
  for_each_product(batch * groups, s, [&](int64_t i, int64_t oc, int64_t, int64_t p, int64_t tap,
                                          int64_t cell) {
    grad_input[i * s.input_block() + cell] +=
        weight[i % groups * s.weight_block() + oc * s.taps() + tap] *
        grad_output[i * s.output_block() + oc * s.positions() + p];
  });
}

template <typename scalar_t>
void reference_grad_weight(const scalar_t* grad_output, const scalar_t* input,
                           scalar_t* grad_weight, int64_t batch, int64_t groups,
                           const ConvShape& s) {
  for (int64_t k = 0; k < groups * s.weight_block(); ++k) grad_weight[k] = 0;
  for_each_product(batch * groups, s, [&](int64_t i, int64_t oc, int64_t, int64_t p, int64_t tap,
                                          int64_t cell) {
    grad_weight[i % groups * s.weight_block() + oc * s.taps() + tap] +=
        grad_output[i * s.output_block() + oc * s.positions() + p] * input[i * s.input_block() + cell];
  });
}

template <typename scalar_t>
void reference_grad_bias(const scalar_t* grad_output, scalar_t* grad_bias, int64_t batch,
                         int64_t channels, int64_t positions) {
  for (int64_t c = 0; c < channels; ++c) {
    grad_bias[c] = 0;
    for (int64_t n = 0; n < batch; ++n)
      for (int64_t p = 0; p < positions; ++p) grad_bias[c] += grad_output[(n * channels + c) * positions + p];
  }
}

LENET_EXT_CONV2D_FORWARD(reference_forward)
LENET_EXT_CONV2D_GRAD(reference_grad_input)
LENET_EXT_CONV2D_GRAD(reference_grad_weight)
template void reference_grad_bias(const float*, float*, int64_t, int64_t, int64_t);
template void reference_grad_bias(const double*, double*, int64_t, int64_t, int64_t);

}  // namespace lenet_ext::cpu::conv2d
