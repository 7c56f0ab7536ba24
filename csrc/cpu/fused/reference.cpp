// The fused ops' reference: conv2d's and linear's reference kernels, and the ReLU + 2x2 pool as a
// plain loop over each window's four cells in torch's order (rows, then columns), ReLU'd, taken
// when takes_over; its backward adds each window's gradient at its argmax where the output passed
// the ReLU. No vectors, no threads. Memory: the conv output is read once, as in the fused pass.
#include <algorithm>
#include <type_traits>

#include "../../shapes.h"
#include "../names.h"
#include "../conv2d/algorithms.h"
#include "../linear/algorithms.h"
#include "algorithms.h"

namespace lenet_ext::cpu::fused {

namespace {
constexpr const char* kAlgorithmNames[] = {"reference", "fused"};

// The argmax of window (dy, dx) as the index type stores it: its window code, or its plane offset.
template <typename index_t>
index_t encode(int64_t dy, int64_t dx, int64_t corner, int64_t conv_w) {
  return std::is_same_v<index_t, int64_t> ? index_t(corner + dy * conv_w + dx) : index_t(dy * 2 + dx);
}

template <typename scalar_t>
void reference_conv2d_backward(const scalar_t* grad_output, const scalar_t* input,
                               const scalar_t* weight, scalar_t* grad_input, scalar_t* grad_weight,
                               scalar_t* grad_bias, int64_t batch, int64_t groups,
                               const ConvShape& s) {
  if (grad_input) conv2d::reference_grad_input(grad_output, weight, grad_input, batch, groups, s);
  if (grad_weight) conv2d::reference_grad_weight(grad_output, input, grad_weight, batch, groups, s);
  if (grad_bias)
    conv2d::reference_grad_bias(grad_output, grad_bias, batch, groups * s.out_channels,
                                s.positions());
}

template <typename scalar_t>
void reference_linear_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                              scalar_t* output, int64_t rows, int64_t in_features,
                              int64_t out_features) {
  linear::reference_forward(input, weight, bias, output, {rows, in_features, out_features});
}

template <typename scalar_t>
void reference_linear_backward(const scalar_t* grad_output, const scalar_t* input,
                               const scalar_t* weight, scalar_t* grad_input, scalar_t* grad_weight,
                               scalar_t* grad_bias, int64_t rows, int64_t in_features,
                               int64_t out_features) {
  linear::reference_backward(grad_output, input, weight, grad_input, grad_weight, grad_bias,
                             {rows, in_features, out_features});
}
}  // namespace

const char* name(Algorithm algorithm) { return kAlgorithmNames[static_cast<int>(algorithm)]; }

std::optional<Algorithm> algorithm_named(std::string_view name) {
  return named<Algorithm>(kAlgorithmNames, name);
}

template <typename scalar_t, typename index_t>
void reference_relu_max_pool2x2(const scalar_t* conv, scalar_t* output, index_t* indices,
                                int64_t planes, int64_t conv_h, int64_t conv_w) {
  const int64_t out_h = conv_h / 2, out_w = conv_w / 2;
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t oh = 0; oh < out_h; ++oh)
      for (int64_t ow = 0; ow < out_w; ++ow) {
        const int64_t corner = 2 * oh * conv_w + 2 * ow, o = (p * out_h + oh) * out_w + ow;
        const scalar_t* plane = conv + p * conv_h * conv_w;
        scalar_t best = relu(plane[corner]);
        index_t best_index = encode<index_t>(0, 0, corner, conv_w);
        for (int64_t cell = 1; cell < 4; ++cell) {
          const int64_t dy = cell / 2, dx = cell % 2;
          const scalar_t value = relu(plane[corner + dy * conv_w + dx]);
          if (takes_over(value, best)) best = value, best_index = encode<index_t>(dy, dx, corner, conv_w);
        }
        output[o] = best;
        indices[o] = best_index;
      }
}

template <typename scalar_t, typename index_t>
bool reference_relu_max_pool2x2_backward(const scalar_t* grad_output, const scalar_t* output,
                                         const index_t* indices, scalar_t* grad_conv,
                                         int64_t planes, int64_t conv_h, int64_t conv_w,
                                         int64_t* bad_index) {
  const int64_t out_h = conv_h / 2, out_w = conv_w / 2, conv_plane = conv_h * conv_w;
  std::fill_n(grad_conv, planes * conv_plane, scalar_t(0));
  bool ok = true;
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t oh = 0; oh < out_h; ++oh)
      for (int64_t ow = 0; ow < out_w; ++ow) {
        const int64_t o = (p * out_h + oh) * out_w + ow, index = indices[o];
        const int64_t cell = std::is_same_v<index_t, int64_t>
                                 ? index
                                 : 2 * oh * conv_w + 2 * ow + index / 2 * conv_w + index % 2;
        if (std::is_same_v<index_t, int64_t> ? index < 0 || index >= conv_plane : index >= 4) {
          *bad_index = index;
          ok = false;
          continue;
        }
        grad_conv[p * conv_plane + cell] += relu_grad(grad_output[o], output[o]);
      }
  return ok;
}

template <typename scalar_t, typename index_t>
Kernels<scalar_t, index_t> kernels(Algorithm algorithm) {
  if (algorithm == Algorithm::kFused)
    return {&conv2d_forward<scalar_t>, &conv2d_backward<scalar_t>,
            &relu_max_pool2x2<scalar_t, index_t>, &relu_max_pool2x2_backward<scalar_t, index_t>,
            &linear_forward<scalar_t>, &linear_backward<scalar_t>};
  return {&conv2d::reference_forward<scalar_t>, &reference_conv2d_backward<scalar_t>,
          &reference_relu_max_pool2x2<scalar_t, index_t>,
          &reference_relu_max_pool2x2_backward<scalar_t, index_t>,
          &reference_linear_forward<scalar_t>, &reference_linear_backward<scalar_t>};
}

#define LENET_EXT_INSTANTIATE(scalar_t, index_t)                                              \
  template Kernels<scalar_t, index_t> kernels(Algorithm);                                     \
  template void reference_relu_max_pool2x2(const scalar_t*, scalar_t*, index_t*, int64_t,     \
                                           int64_t, int64_t);                                 \
  template bool reference_relu_max_pool2x2_backward(const scalar_t*, const scalar_t*,          \
                                                    const index_t*, scalar_t*, int64_t,        \
                                                    int64_t, int64_t, int64_t*);
LENET_EXT_INSTANTIATE(float, int64_t)
LENET_EXT_INSTANTIATE(double, int64_t)
LENET_EXT_INSTANTIATE(float, uint8_t)
LENET_EXT_INSTANTIATE(double, uint8_t)
#undef LENET_EXT_INSTANTIATE

}  // namespace lenet_ext::cpu::fused
