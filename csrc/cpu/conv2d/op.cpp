// conv2d on CPU: the op's entry points (checks, allocation, then raw pointers), the run of the
// algorithm select.cpp picks for each pass (or the one a test forces), grad_bias, and the internal
// ops tests use to see and force the choice. The algorithms are one a file in this folder.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../../backward.h"
#include "../../conv2d.h"
#include "../parallel.h"
#include "algorithms.h"

namespace lenet_ext::cpu {
namespace conv2d {

template <typename scalar_t>
void forward(Algorithm algorithm, const scalar_t* input, const scalar_t* weight,
             const scalar_t* bias, scalar_t* output, int64_t batch, int64_t groups,
             const ConvShape& s) {
  switch (algorithm) {
    case Algorithm::kReference: return reference_forward(input, weight, bias, output, batch, groups, s);
    case Algorithm::kIm2col: return im2col_forward(input, weight, bias, output, batch, groups, s);
    case Algorithm::kImplicit: return implicit_forward(input, weight, bias, output, batch, groups, s);
    case Algorithm::kWinograd: return winograd_forward(input, weight, bias, output, batch, groups, s);
    case Algorithm::kDirect: return direct_forward(input, weight, bias, output, batch, groups, s);
    case Algorithm::kRows: return rows_forward(input, weight, bias, output, batch, groups, s);
    case Algorithm::kLanes: {
      const int64_t done = lanes_forward(input, weight, bias, output, batch, groups, s);
      const int64_t rest = batch - done;  // fewer than a block: never lanes again
      if (rest > 0)
        forward(select<scalar_t>(Pass::kForward, s, rest, true), input + done * groups * s.input_block(),
                weight, bias, output + done * groups * s.output_block(), rest, groups, s);
    }
  }
}

template <typename scalar_t>
void grad_input(Algorithm algorithm, const scalar_t* grad_output, const scalar_t* weight,
                scalar_t* grad_input, int64_t batch, int64_t groups, const ConvShape& s) {
  switch (algorithm) {
    case Algorithm::kReference: return reference_grad_input(grad_output, weight, grad_input, batch, groups, s);
    case Algorithm::kDirect: return direct_grad_input(grad_output, weight, grad_input, batch, groups, s);
    case Algorithm::kImplicit: return implicit_grad_input(grad_output, weight, grad_input, batch, groups, s);
    case Algorithm::kWinograd: return winograd_grad_input(grad_output, weight, grad_input, batch, groups, s);
    default: return im2col_grad_input(grad_output, weight, grad_input, batch, groups, s);
  }
}

template <typename scalar_t>
void grad_weight(Algorithm algorithm, const scalar_t* grad_output, const scalar_t* input,
                 scalar_t* grad_weight, int64_t batch, int64_t groups, const ConvShape& s) {
  switch (algorithm) {
    case Algorithm::kReference: return reference_grad_weight(grad_output, input, grad_weight, batch, groups, s);
    case Algorithm::kDirect: return direct_grad_weight(grad_output, input, grad_weight, batch, groups, s);
    case Algorithm::kRows: return rows_grad_weight(grad_output, input, grad_weight, batch, groups, s);
    case Algorithm::kWinograd: return winograd_grad_weight(grad_output, input, grad_weight, batch, groups, s);
    default: return im2col_grad_weight(grad_output, input, grad_weight, batch, groups, s);
  }
}

// Whether 0 * weight is 0 everywhere, asked only where the answer can change the choice.
template <typename scalar_t>
bool finite_weight(const scalar_t* weight, int64_t groups, const ConvShape& s, int64_t batch) {
  if (!claims<scalar_t>(Algorithm::kDirect, Pass::kGradInput, s, batch, true) &&
      !claims<scalar_t>(Algorithm::kImplicit, Pass::kGradInput, s, batch, true))
    return true;
  return all_finite(weight, groups * s.weight_block());
}

// grad_input's algorithm. The weight is scanned for non-finite values (a read of all of it: a
// tenth of a 512->512 3x3 layer's grad_input at batch 1) only where the choice for finite weights
// needs them (direct, implicit); no other claim depends on it.
template <typename scalar_t>
Algorithm select_grad_input(const scalar_t* weight, int64_t groups, const ConvShape& s,
                            int64_t batch) {
  const Algorithm chosen = select<scalar_t>(Pass::kGradInput, s, batch, true);
  if (chosen != Algorithm::kDirect && chosen != Algorithm::kImplicit) return chosen;
  return select<scalar_t>(Pass::kGradInput, s, batch, all_finite(weight, groups * s.weight_block()));
}

// Per channel, over images in order; within a plane kLanes interleaved running sums (fixed, so
// the result does not depend on threads) let the additions vectorise. The sums are one GCC vector,
// added whole vectors at a time: a loop of variable width (min(kLanes, left)) does not vectorise
// and runs at ~1 addition a cycle, which for conv1 takes as long as its grad_weight's FMAs.
template <typename scalar_t>
void grad_bias(const scalar_t* grad_output, scalar_t* grad_bias, int64_t batch,
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

// The lanes algorithm runs grad_input and grad_weight together (one transpose of grad_output for
// both) over whole blocks of images; the images past the last block take select's choice, and
// their grad_weight is added last.
template <typename scalar_t>
void backward(Algorithm grad_input_algorithm, Algorithm grad_weight_algorithm,
              const scalar_t* grad_output, const scalar_t* input, const scalar_t* weight,
              scalar_t* grad_input_out, scalar_t* grad_weight_out, scalar_t* grad_bias_out,
              int64_t batch, int64_t groups, const ConvShape& s) {
  const bool lanes_input = grad_input_out && grad_input_algorithm == Algorithm::kLanes;
  const bool lanes_weight = grad_weight_out && grad_weight_algorithm == Algorithm::kLanes;
  const int64_t done = lanes_input || lanes_weight
                           ? lanes_backward(grad_output, input, weight, lanes_input ? grad_input_out : nullptr,
                                            lanes_weight ? grad_weight_out : nullptr, batch, groups, s)
                           : 0;
  const int64_t rest = batch - done;
  const int64_t grad_at = done * groups * s.output_block(), input_at = done * groups * s.input_block();
  if (grad_input_out && !lanes_input)
    grad_input(grad_input_algorithm, grad_output, weight, grad_input_out, batch, groups, s);
  else if (grad_input_out && rest > 0)
    grad_input(select_grad_input(weight, groups, s, rest), grad_output + grad_at, weight,
               grad_input_out + input_at, rest, groups, s);
  if (grad_weight_out && !lanes_weight) {
    grad_weight(grad_weight_algorithm, grad_output, input, grad_weight_out, batch, groups, s);
  } else if (grad_weight_out && rest > 0) {
    std::vector<scalar_t> rest_grad(groups * s.weight_block());
    grad_weight(select<scalar_t>(Pass::kGradWeight, s, rest, true), grad_output + grad_at,
                input + input_at, rest_grad.data(), rest, groups, s);
    for (size_t k = 0; k < rest_grad.size(); ++k) grad_weight_out[k] += rest_grad[k];
  }
  if (grad_bias_out && grad_input_algorithm == Algorithm::kReference)
    reference_grad_bias(grad_output, grad_bias_out, batch, groups * s.out_channels, s.positions());
  else if (grad_bias_out)
    grad_bias(grad_output, grad_bias_out, batch, groups * s.out_channels, s.positions());
}

}  // namespace conv2d

// kernels.h's entry for the op and the fused ops: select.cpp's choice for each pass.
template <typename scalar_t>
void conv2d_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                    scalar_t* output, int64_t batch, int64_t groups, const ConvShape& s) {
  conv2d::forward(conv2d::select<scalar_t>(conv2d::Pass::kForward, s, batch, true), input, weight,
                  bias, output, batch, groups, s);
}

template <typename scalar_t>
void conv2d_backward(const scalar_t* grad_output, const scalar_t* input, const scalar_t* weight,
                     scalar_t* grad_input, scalar_t* grad_weight, scalar_t* grad_bias,
                     int64_t batch, int64_t groups, const ConvShape& s) {
  using namespace conv2d;
  const Algorithm input_algorithm =
      grad_input ? select_grad_input(weight, groups, s, batch) : Algorithm::kIm2col;
  const Algorithm weight_algorithm = select<scalar_t>(Pass::kGradWeight, s, batch, true);
  backward(input_algorithm, weight_algorithm, grad_output, input, weight, grad_input, grad_weight,
           grad_bias, batch, groups, s);
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

ConvShape conv_shape(const at::Tensor& input, const at::Tensor& weight,
                     const std::vector<int64_t>& output_shape, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return {weight.size(1),  input.size(2),   input.size(3),
          weight.size(0) / groups, output_shape[2], output_shape[3],
          weight.size(2),  weight.size(3),  stride[0],  stride[1],
          padding[0],      padding[1],      dilation[0], dilation[1]};
}

// An algorithm forced by name (tests): unknown names and shapes it does not claim are refused.
template <typename scalar_t>
conv2d::Algorithm forced(const char* op, std::string_view algorithm, conv2d::Pass pass,
                         const ConvShape& s, int64_t batch, int64_t groups, const scalar_t* weight) {
  const auto chosen = conv2d::algorithm_named(algorithm);
  TORCH_CHECK(chosen.has_value(), "lenet_ext.", op, ": expected algorithm to be one of reference, "
              "im2col, direct, rows, lanes, implicit, winograd, but got '", algorithm, "'");
  TORCH_CHECK(conv2d::claims<scalar_t>(*chosen, pass, s, batch,
                                       conv2d::finite_weight(weight, groups, s, batch)),
              "lenet_ext.", op, ": algorithm '", algorithm, "' does not claim the ", name(pass),
              " of this shape (batch ", batch, ", ", s.channels, " -> ", s.out_channels,
              " channels a group, ", s.in_h, "x", s.in_w, " input, ", s.kernel_h, "x", s.kernel_w,
              " kernel, stride ", s.stride_h, "x", s.stride_w, ", padding ", s.pad_h, "x", s.pad_w,
              ", dilation ", s.dilation_h, "x", s.dilation_w, ", ",
              sizeof(scalar_t) == 4 ? "float32" : "float64", ", finite weights or not)");
  return *chosen;
}

// The op's entry points; `algorithm` set (the _forced ops) runs that algorithm for every pass.
at::Tensor conv2d_run(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      std::optional<std::string_view> algorithm) {
  const auto output_shape =
      check_conv2d_args(input, weight, bias, stride, padding, dilation, groups);
  const ConvShape s = conv_shape(input, weight, output_shape, stride, padding, dilation, groups);
  auto output = at::empty(output_shape, input.options());
  const auto [x, w] = contiguous(input, weight);
  const auto b = contiguous_bias(bias);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::conv2d", [&] {
    const scalar_t* w_data = w->const_data_ptr<scalar_t>();
    const int64_t batch = input.size(0);
    const auto chosen = algorithm ? forced("_conv2d_forced", *algorithm, conv2d::Pass::kForward, s,
                                           batch, groups, w_data)
                                  : conv2d::select<scalar_t>(conv2d::Pass::kForward, s, batch, true);
    conv2d::forward(chosen, x->const_data_ptr<scalar_t>(), w_data, optional_data<scalar_t>(b),
                    output.mutable_data_ptr<scalar_t>(), batch, groups, s);
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_run(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask, std::optional<std::string_view> algorithm) {
  check_conv2d_backward_args(grad_output, input, weight, stride, padding, dilation, groups);
  const ConvShape s = conv_shape(input, weight, grad_output.sizes().vec(), stride, padding,
                                 dilation, groups);
  const int64_t batch = input.size(0);
  const auto [grad, x, w] = contiguous(grad_output, input, weight);
  auto [grad_input, grad_weight, grad_bias] = empty_grads(input, weight, output_mask);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::conv2d_backward", [&] {
    const scalar_t* w_data = w->const_data_ptr<scalar_t>();
    const scalar_t* g = grad->const_data_ptr<scalar_t>();
    const scalar_t* x_data = x->const_data_ptr<scalar_t>();
    if (!algorithm)
      return conv2d_backward(g, x_data, w_data, data_or_null<scalar_t>(grad_input),
                             data_or_null<scalar_t>(grad_weight), data_or_null<scalar_t>(grad_bias),
                             batch, groups, s);
    using conv2d::Pass;
    const char* op = "_conv2d_backward_forced";
    const auto chosen = conv2d::algorithm_named(*algorithm);
    if (output_mask[0]) forced(op, *algorithm, Pass::kGradInput, s, batch, groups, w_data);
    if (output_mask[1]) forced(op, *algorithm, Pass::kGradWeight, s, batch, groups, w_data);
    if (!chosen) forced(op, *algorithm, Pass::kForward, s, batch, groups, w_data);  // the name
    conv2d::backward(*chosen, *chosen, g, x_data, w_data, data_or_null<scalar_t>(grad_input),
                     data_or_null<scalar_t>(grad_weight), data_or_null<scalar_t>(grad_bias), batch,
                     groups, s);
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return conv2d_run(input, weight, bias, stride, padding, dilation, groups, std::nullopt);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  return conv2d_backward_run(grad_output, input, weight, stride, padding, dilation, groups,
                             output_mask, std::nullopt);
}

at::Tensor conv2d_forced_cpu(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                             c10::string_view algorithm) {
  return conv2d_run(input, weight, bias, stride, padding, dilation, groups,
                    std::string_view(algorithm.data(), algorithm.size()));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_forced_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask, c10::string_view algorithm) {
  return conv2d_backward_run(grad_output, input, weight, stride, padding, dilation, groups,
                             output_mask, std::string_view(algorithm.data(), algorithm.size()));
}

// The algorithm select.cpp picks for one pass ("forward", "grad_input", "grad_weight") of a call.
std::string conv2d_algorithm_cpu(const at::Tensor& input, const at::Tensor& weight,
                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, int64_t groups, c10::string_view pass) {
  const auto output_shape =
      check_conv2d_args(input, weight, std::nullopt, stride, padding, dilation, groups,
                        "_conv2d_algorithm");
  const auto chosen_pass = conv2d::pass_named(std::string_view(pass.data(), pass.size()));
  TORCH_CHECK(chosen_pass.has_value(), "lenet_ext._conv2d_algorithm: expected step to be one of "
              "forward, grad_input, grad_weight, but got '", pass, "'");
  const ConvShape s = conv_shape(input, weight, output_shape, stride, padding, dilation, groups);
  const auto w = weight.expect_contiguous();
  std::string algorithm;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::_conv2d_algorithm", [&] {
    const int64_t batch = input.size(0);
    algorithm = conv2d::name(
        *chosen_pass == conv2d::Pass::kGradInput
            ? conv2d::select_grad_input(w->const_data_ptr<scalar_t>(), groups, s, batch)
            : conv2d::select<scalar_t>(*chosen_pass, s, batch, true));
  });
  return algorithm;
}

}  // namespace lenet_ext::cpu
