// lenet on CPU: the tutorial's whole LeNet, forward and backward, each as one op, so that a
// training step costs two dispatcher calls instead of ~25. It chains conv2d's and linear's kernels
// (kernels.h) and the block's fused ReLU + pool pass (relu_max_pool2x2.cpp) on raw pointers, or
// for the tests their reference kernels (algorithms.h).
// The conv blocks run on chunks of kChunk images, chunks spread over threads: a chunk's conv
// output and gradients (~0.5 MB) stay in L2 between the kernels that write and read them. The fc
// layers run on the whole batch (bigger GEMMs); their ReLU is an in-place pass, and in backward a
// mask on the saved activation. Weight gradients of the conv layers are summed per chunk, then over
// chunks in order: the chunking depends on the batch only, so results are bitwise the same for
// any thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <memory>
#include <optional>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include <c10/util/accumulate.h>

#include "../../checks.h"
#include "../parallel.h"
#include "algorithms.h"

namespace lenet_ext::cpu {
namespace {

using fused::Algorithm;

constexpr int64_t kChunk = 16;  // images per chunk of the conv blocks

const ConvShape kConv1{1, 32, 32, 6, 28, 28, 5, 5, 1, 1, 0, 0, 1, 1};
const ConvShape kConv2{6, 14, 14, 16, 10, 10, 5, 5, 1, 1, 0, 0, 1, 1};
constexpr int64_t kImage = 32 * 32, kPool1 = 6 * 14 * 14, kPool2 = 16 * 5 * 5;
constexpr int64_t kFc1 = 120, kFc2 = 84, kClasses = 10;

// The ten parameters in the op's argument order (and LeNet.parameters() order).
enum Param { kConv1W, kConv1B, kConv2W, kConv2B, kFc1W, kFc1B, kFc2W, kFc2B, kFc3W, kFc3B, kParams };
const char* const kParamNames[kParams] = {"conv1_weight", "conv1_bias", "conv2_weight",
                                          "conv2_bias",   "fc1_weight", "fc1_bias",
                                          "fc2_weight",   "fc2_bias",   "fc3_weight",
                                          "fc3_bias"};
const std::vector<int64_t> kParamShapes[kParams] = {
    {6, 1, 5, 5}, {6}, {16, 6, 5, 5}, {16}, {kFc1, kPool2}, {kFc1}, {kFc2, kFc1}, {kFc2},
    {kClasses, kFc2}, {kClasses}};

int64_t chunk_count(int64_t batch) { return (batch + kChunk - 1) / kChunk; }

// Scratch memory, not initialised (a zeroed std::vector costs a pass over it, a large part of a
// batch-1 forward). Sized for one chunk, or the whole batch when smaller.
template <typename scalar_t>
std::unique_ptr<scalar_t[]> scratch(int64_t images, int64_t per_image, int64_t batch) {
  return std::unique_ptr<scalar_t[]>(new scalar_t[std::min(images, batch) * per_image]);
}

// What the forward saves for the backward, [batch, ...] each: written by the forward
// (value_t = scalar_t), read by the backward (value_t = const scalar_t).
// The pools' argmax are window codes (dy * 2 + dx, uint8): 3.2 MB less to write, read and
// page-fault in at batch 256 than torch's int64 plane offsets.
template <typename value_t, typename index_t = std::conditional_t<std::is_const_v<value_t>,
                                                                  const uint8_t, uint8_t>>
struct Activations {
  value_t* pool1;
  index_t* pool1_indices;
  value_t* pool2;  // fc1's input
  index_t* pool2_indices;
  value_t* fc1_relu;
  value_t* fc2_relu;
};

template <typename scalar_t>
void lenet_forward(const scalar_t* input, const std::array<const scalar_t*, kParams>& p,
                   scalar_t* logits, const Activations<scalar_t>& a, int64_t batch,
                   Algorithm algorithm) {
  const auto k = fused::kernels<scalar_t, uint8_t>(algorithm);
  at::parallel_for(0, chunk_count(batch), 1, [&](int64_t begin, int64_t end) {
    const auto conv = scratch<scalar_t>(kChunk, kConv1.output_block(), batch);  // conv1's, then conv2's
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t first = chunk * kChunk, count = std::min(kChunk, batch - first);
      k.conv2d_forward(input + first * kImage, p[kConv1W], p[kConv1B], conv.get(), count, 1, kConv1);
      k.relu_max_pool2x2(conv.get(), a.pool1 + first * kPool1, a.pool1_indices + first * kPool1,
                       count * kConv1.out_channels, kConv1.out_h, kConv1.out_w);
      k.conv2d_forward(a.pool1 + first * kPool1, p[kConv2W], p[kConv2B], conv.get(), count, 1,
                     kConv2);
      k.relu_max_pool2x2(conv.get(), a.pool2 + first * kPool2, a.pool2_indices + first * kPool2,
                       count * kConv2.out_channels, kConv2.out_h, kConv2.out_w);
    }
  });
  k.linear_forward(a.pool2, p[kFc1W], p[kFc1B], a.fc1_relu, batch, kPool2, kFc1);
  relu_forward(a.fc1_relu, a.fc1_relu, batch * kFc1);
  k.linear_forward(a.fc1_relu, p[kFc2W], p[kFc2B], a.fc2_relu, batch, kFc1, kFc2);
  relu_forward(a.fc2_relu, a.fc2_relu, batch * kFc2);
  k.linear_forward(a.fc2_relu, p[kFc3W], p[kFc3B], logits, batch, kFc2, kClasses);
}

// grads[0] is the input's gradient, grads[1 + i] parameter i's; null where not wanted. The chain
// stops below the lowest layer whose gradient is wanted. Returns false if a saved index lies
// outside its plane (*bad_index is one of them).
template <typename scalar_t>
bool lenet_backward(const scalar_t* grad_logits, const scalar_t* input,
                    const std::array<const scalar_t*, kParams>& p,
                    const Activations<const scalar_t>& a,
                    const std::array<scalar_t*, 1 + kParams>& grads, int64_t batch,
                    int64_t* bad_index, Algorithm algorithm) {
  const auto k = fused::kernels<scalar_t, uint8_t>(algorithm);
  const int64_t lowest = std::find_if(grads.begin(), grads.end(), [](auto* g) { return g; }) -
                         grads.begin();
  // grads index of each layer's weight: the layer's input gradient is needed when lower is wanted
  const auto below = [&](int64_t layer_weight_slot) { return lowest < layer_weight_slot; };
  const auto grad_fc2_relu = scratch<scalar_t>(batch, kFc2, batch);
  const auto grad_fc1_relu = scratch<scalar_t>(batch, kFc1, batch);
  const auto grad_pool2 = scratch<scalar_t>(batch, kPool2, batch);
  k.linear_backward(grad_logits, a.fc2_relu, p[kFc3W], below(1 + kFc3W) ? grad_fc2_relu.get() : nullptr,
                  grads[1 + kFc3W], grads[1 + kFc3B], batch, kFc2, kClasses);
  if (!below(1 + kFc3W)) return true;
  relu_backward(grad_fc2_relu.get(), a.fc2_relu, grad_fc2_relu.get(), batch * kFc2);
  k.linear_backward(grad_fc2_relu.get(), a.fc1_relu, p[kFc2W],
                  below(1 + kFc2W) ? grad_fc1_relu.get() : nullptr, grads[1 + kFc2W],
                  grads[1 + kFc2B], batch, kFc1, kFc2);
  if (!below(1 + kFc2W)) return true;
  relu_backward(grad_fc1_relu.get(), a.fc1_relu, grad_fc1_relu.get(), batch * kFc1);
  k.linear_backward(grad_fc1_relu.get(), a.pool2, p[kFc1W],
                  below(1 + kFc1W) ? grad_pool2.get() : nullptr, grads[1 + kFc1W],
                  grads[1 + kFc1B], batch, kPool2, kFc1);
  if (!below(1 + kFc1W)) return true;

  // Per-chunk partial gradients of the conv parameters, summed over chunks in order below.
  const int64_t chunks = chunk_count(batch);
  constexpr std::array<Param, 4> conv_params = {kConv1W, kConv1B, kConv2W, kConv2B};
  if (chunks == 0) {  // an empty batch: the conv parameters' gradients are zero
    for (const Param param : conv_params)
      if (grads[1 + param])
        std::fill_n(grads[1 + param], c10::multiply_integers(kParamShapes[param]), scalar_t(0));
    return true;
  }
  std::array<std::vector<scalar_t>, 4> partials;
  for (int64_t i = 0; i < 4; ++i)
    if (grads[1 + conv_params[i]])
      partials[i].resize(chunks * c10::multiply_integers(kParamShapes[conv_params[i]]));
  const auto partial = [&](int64_t i, int64_t chunk) -> scalar_t* {
    return partials[i].empty() ? nullptr
                               : partials[i].data() + chunk * (partials[i].size() / chunks);
  };
  std::atomic<bool> ok{true};
  std::atomic<int64_t> bad{0};
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    const auto grad_conv = scratch<scalar_t>(kChunk, kConv1.output_block(), batch);
    const auto grad_pool1 = scratch<scalar_t>(kChunk, kPool1, batch);
    int64_t chunk_bad = 0;
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t first = chunk * kChunk, count = std::min(kChunk, batch - first);
      if (!k.relu_max_pool2x2_backward(grad_pool2.get() + first * kPool2, a.pool2 + first * kPool2,
                                     a.pool2_indices + first * kPool2, grad_conv.get(),
                                     count * kConv2.out_channels, kConv2.out_h, kConv2.out_w,
                                     &chunk_bad)) {
        bad.store(chunk_bad), ok.store(false);
        continue;
      }
      k.conv2d_backward(grad_conv.get(), a.pool1 + first * kPool1, p[kConv2W],
                      below(1 + kConv2W) ? grad_pool1.get() : nullptr, partial(2, chunk),
                      partial(3, chunk), count, 1, kConv2);
      if (!below(1 + kConv2W)) continue;
      if (!k.relu_max_pool2x2_backward(grad_pool1.get(), a.pool1 + first * kPool1,
                                     a.pool1_indices + first * kPool1, grad_conv.get(),
                                     count * kConv1.out_channels, kConv1.out_h, kConv1.out_w,
                                     &chunk_bad)) {
        bad.store(chunk_bad), ok.store(false);
        continue;
      }
      k.conv2d_backward(grad_conv.get(), input + first * kImage, p[kConv1W],
                      grads[0] ? grads[0] + first * kImage : nullptr, partial(0, chunk),
                      partial(1, chunk), count, 1, kConv1);
    }
  });
  *bad_index = bad.load();
  if (!ok.load()) return false;
  for (int64_t i = 0; i < 4; ++i)
    if (grads[1 + conv_params[i]])
      sum_parts(partials[i].data(), chunks, partials[i].size() / chunks, grads[1 + conv_params[i]]);
  return true;
}

// input (N, 1, 32, 32) float32/float64; every other tensor named by `arg` matches it in dtype
// and device and has exactly `shape`.
void check_input(const char* op, const at::Tensor& input) {
  check_dtype(op, "input", input);
  check_dim(op, "input", input, 4, "(N, 1, 32, 32)");
  TORCH_CHECK(input.size(1) == 1 && input.size(2) == 32 && input.size(3) == 32, "lenet_ext.", op,
              ": expected input of shape (N, 1, 32, 32), but got shape ", input.sizes());
}

void check_like_input(const char* op, const char* arg, const at::Tensor& t,
                      at::IntArrayRef shape, const at::Tensor& input) {
  check_same_dtype_device(op, arg, t, "input", input);
  check_same_shape(op, arg, t, shape);
}

void check_indices(const char* op, const char* arg, const at::Tensor& t, at::IntArrayRef shape,
                   const at::Tensor& input) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kByte, "lenet_ext.", op, ": expected ", arg,
                   " to have dtype uint8 (window codes, as lenet returns them), but got ",
                   t.scalar_type());
  TORCH_CHECK(t.device() == input.device(), "lenet_ext.", op, ": expected ", arg, " to be on the "
              "same device as input (", input.device(), "), but got ", t.device());
  check_same_shape(op, arg, t, shape);
}

}  // namespace

using Tensors11 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                             at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

using Tensors7 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                            at::Tensor>;

namespace {

// The ops' entry points; `algorithm` set (the _forced ops) runs that algorithm's kernels.
Tensors7 lenet_run(std::optional<std::string_view> algorithm, const at::Tensor& input, const at::Tensor& conv1_weight, const at::Tensor& conv1_bias,
          const at::Tensor& conv2_weight, const at::Tensor& conv2_bias,
          const at::Tensor& fc1_weight, const at::Tensor& fc1_bias, const at::Tensor& fc2_weight,
          const at::Tensor& fc2_bias, const at::Tensor& fc3_weight, const at::Tensor& fc3_bias) {
  const char* op = algorithm ? "_lenet_forced" : "lenet";
  const Algorithm chosen = fused::chosen_algorithm(op, algorithm);
  check_input(op, input);
  const std::array<const at::Tensor*, kParams> params = {
      &conv1_weight, &conv1_bias, &conv2_weight, &conv2_bias, &fc1_weight,
      &fc1_bias,     &fc2_weight, &fc2_bias,     &fc3_weight, &fc3_bias};
  for (int64_t i = 0; i < kParams; ++i)
    check_like_input(op, kParamNames[i], *params[i], kParamShapes[i], input);

  const int64_t batch = input.size(0);
  const auto options = input.options();
  auto logits = at::empty({batch, kClasses}, options);
  auto pool1 = at::empty({batch, 6, 14, 14}, options);
  auto pool1_indices = at::empty({batch, 6, 14, 14}, options.dtype(at::kByte));
  auto pool2 = at::empty({batch, 16, 5, 5}, options);
  auto pool2_indices = at::empty({batch, 16, 5, 5}, options.dtype(at::kByte));
  auto fc1_relu = at::empty({batch, kFc1}, options);
  auto fc2_relu = at::empty({batch, kFc2}, options);
  const auto x = input.expect_contiguous();
  std::array<c10::MaybeOwned<at::Tensor>, kParams> contiguous;
  for (int64_t i = 0; i < kParams; ++i) contiguous[i] = params[i]->expect_contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::lenet", [&] {
    std::array<const scalar_t*, kParams> p;
    for (int64_t i = 0; i < kParams; ++i) p[i] = contiguous[i]->const_data_ptr<scalar_t>();
    const Activations<scalar_t> a{pool1.mutable_data_ptr<scalar_t>(),
                                  pool1_indices.mutable_data_ptr<uint8_t>(),
                                  pool2.mutable_data_ptr<scalar_t>(),
                                  pool2_indices.mutable_data_ptr<uint8_t>(),
                                  fc1_relu.mutable_data_ptr<scalar_t>(),
                                  fc2_relu.mutable_data_ptr<scalar_t>()};
    lenet_forward(x->const_data_ptr<scalar_t>(), p, logits.mutable_data_ptr<scalar_t>(), a, batch,
                  chosen);
  });
  return {logits, pool1, pool1_indices, pool2, pool2_indices, fc1_relu, fc2_relu};
}

Tensors11 lenet_backward_run(std::optional<std::string_view> algorithm, const at::Tensor& grad_logits, const at::Tensor& input,
                             const at::Tensor& conv1_weight, const at::Tensor& conv2_weight,
                             const at::Tensor& fc1_weight, const at::Tensor& fc2_weight,
                             const at::Tensor& fc3_weight, const at::Tensor& pool1,
                             const at::Tensor& pool1_indices, const at::Tensor& pool2,
                             const at::Tensor& pool2_indices, const at::Tensor& fc1_relu,
                             const at::Tensor& fc2_relu, std::array<bool, 11> output_mask) {
  const char* op = algorithm ? "_lenet_backward_forced" : "lenet_backward";
  const Algorithm chosen = fused::chosen_algorithm(op, algorithm);
  check_input(op, input);
  const int64_t batch = input.size(0);
  const std::array<std::pair<Param, const at::Tensor*>, 5> weights = {
      {{kConv1W, &conv1_weight}, {kConv2W, &conv2_weight}, {kFc1W, &fc1_weight},
       {kFc2W, &fc2_weight}, {kFc3W, &fc3_weight}}};
  for (const auto& [param, weight] : weights)
    check_like_input(op, kParamNames[param], *weight, kParamShapes[param], input);
  check_like_input(op, "grad_logits", grad_logits, {batch, kClasses}, input);
  check_like_input(op, "pool1", pool1, {batch, 6, 14, 14}, input);
  check_indices(op, "pool1_indices", pool1_indices, {batch, 6, 14, 14}, input);
  check_like_input(op, "pool2", pool2, {batch, 16, 5, 5}, input);
  check_indices(op, "pool2_indices", pool2_indices, {batch, 16, 5, 5}, input);
  check_like_input(op, "fc1_relu", fc1_relu, {batch, kFc1}, input);
  check_like_input(op, "fc2_relu", fc2_relu, {batch, kFc2}, input);

  std::array<at::Tensor, 1 + kParams> grads;
  if (output_mask[0]) grads[0] = at::empty(input.sizes(), input.options());
  for (int64_t i = 0; i < kParams; ++i)
    if (output_mask[1 + i]) grads[1 + i] = at::empty(kParamShapes[i], input.options());
  const auto contiguous = [](const at::Tensor& t) { return t.expect_contiguous(); };
  const auto g = contiguous(grad_logits), x = contiguous(input);
  const auto w1 = contiguous(conv1_weight), w2 = contiguous(conv2_weight),
             w3 = contiguous(fc1_weight), w4 = contiguous(fc2_weight), w5 = contiguous(fc3_weight);
  const auto p1 = contiguous(pool1), i1 = contiguous(pool1_indices), p2 = contiguous(pool2),
             i2 = contiguous(pool2_indices), h1 = contiguous(fc1_relu), h2 = contiguous(fc2_relu);
  int64_t bad_index = 0;
  bool indices_ok = true;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::lenet_backward", [&] {
    std::array<const scalar_t*, kParams> p{};  // biases are not needed
    p[kConv1W] = w1->const_data_ptr<scalar_t>();
    p[kConv2W] = w2->const_data_ptr<scalar_t>();
    p[kFc1W] = w3->const_data_ptr<scalar_t>();
    p[kFc2W] = w4->const_data_ptr<scalar_t>();
    p[kFc3W] = w5->const_data_ptr<scalar_t>();
    const Activations<const scalar_t> a{
        p1->const_data_ptr<scalar_t>(), i1->const_data_ptr<uint8_t>(),
        p2->const_data_ptr<scalar_t>(), i2->const_data_ptr<uint8_t>(),
        h1->const_data_ptr<scalar_t>(), h2->const_data_ptr<scalar_t>()};
    std::array<scalar_t*, 1 + kParams> out{};
    for (int64_t i = 0; i < 1 + kParams; ++i)
      out[i] = grads[i].defined() ? grads[i].mutable_data_ptr<scalar_t>() : nullptr;
    indices_ok = lenet_backward(g->const_data_ptr<scalar_t>(), x->const_data_ptr<scalar_t>(), p,
                                a, out, batch, &bad_index, chosen);
  });
  TORCH_CHECK(indices_ok, "lenet_ext.", op, ": expected pool1_indices and pool2_indices in "
              "[0, 4) (window codes dy * 2 + dx), but got ", bad_index);
  return std::apply([](auto&... t) { return Tensors11{t...}; }, grads);
}

}  // namespace

using T = const at::Tensor&;

Tensors7 lenet_cpu(T input, T w1, T b1, T w2, T b2, T w3, T b3, T w4, T b4, T w5, T b5) {
  return lenet_run(std::nullopt, input, w1, b1, w2, b2, w3, b3, w4, b4, w5, b5);
}

Tensors7 lenet_forced_cpu(T input, T w1, T b1, T w2, T b2, T w3, T b3, T w4, T b4, T w5, T b5,
                          c10::string_view algorithm) {
  return lenet_run(std::string_view(algorithm.data(), algorithm.size()), input, w1, b1, w2, b2, w3,
                   b3, w4, b4, w5, b5);
}

Tensors11 lenet_backward_cpu(T grad_logits, T input, T w1, T w2, T w3, T w4, T w5, T pool1,
                             T pool1_indices, T pool2, T pool2_indices, T fc1_relu, T fc2_relu,
                             std::array<bool, 11> output_mask) {
  return lenet_backward_run(std::nullopt, grad_logits, input, w1, w2, w3, w4, w5, pool1,
                            pool1_indices, pool2, pool2_indices, fc1_relu, fc2_relu, output_mask);
}

Tensors11 lenet_backward_forced_cpu(T grad_logits, T input, T w1, T w2, T w3, T w4, T w5, T pool1,
                                    T pool1_indices, T pool2, T pool2_indices, T fc1_relu,
                                    T fc2_relu, std::array<bool, 11> output_mask,
                                    c10::string_view algorithm) {
  return lenet_backward_run(std::string_view(algorithm.data(), algorithm.size()), grad_logits,
                            input, w1, w2, w3, w4, w5, pool1, pool1_indices, pool2, pool2_indices,
                            fc1_relu, fc2_relu, output_mask);
}

}  // namespace lenet_ext::cpu
