// The fused ops' CPU algorithms: `fused` chains the ops' own kernels (each op's selection) with the
// fused ReLU + 2x2 pool pass (relu_max_pool2x2.cpp); `reference` chains the ops' reference
// kernels with a plain ReLU + pool loop (reference.cpp), the yardstick the tests hold `fused` to.
// Both claim every shape the ops accept, so there is nothing to select: the ops run `fused`.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>

#include "../kernels.h"

namespace lenet_ext::cpu::fused {

enum class Algorithm { kReference, kFused };

const char* name(Algorithm algorithm);
std::optional<Algorithm> algorithm_named(std::string_view name);
// `fused`, or the algorithm a _forced op names (an unknown name raises, naming `op`).
Algorithm chosen_algorithm(const char* op, std::optional<std::string_view> algorithm);

// output[p][oh][ow] = max over the 2x2 window of relu(conv[p]): torch's max_pool2d(relu(conv), 2)
// exactly (ties keep the first cell, NaN wins). indices tells the argmax: with index_t = int64_t
// its flat offset into the conv plane (torch's indices), with uint8_t its window code dy * 2 + dx
// (an eighth of the memory, for a caller that keeps them only for its own backward).
// `planes` planes of conv_h x conv_w; an odd last row or column is not read.
template <typename scalar_t, typename index_t>
void relu_max_pool2x2(const scalar_t* conv, scalar_t* output, index_t* indices, int64_t planes,
                      int64_t conv_h, int64_t conv_w);

// grad_conv = 0, then grad_conv[p][cell of indices[o]] += grad_output[o] where output[o] passed
// the ReLU (output > 0 or NaN, as torch's relu backward); indices as relu_max_pool2x2 wrote them.
// Returns false (and leaves the offending gradient out) if an index lies outside its plane or a
// code is past 3; *bad_index is then one of them.
template <typename scalar_t, typename index_t>
bool relu_max_pool2x2_backward(const scalar_t* grad_output, const scalar_t* output,
                               const index_t* indices, scalar_t* grad_conv, int64_t planes,
                               int64_t conv_h, int64_t conv_w, int64_t* bad_index);

// The same two as plain loops (reference.cpp).
template <typename scalar_t, typename index_t>
void reference_relu_max_pool2x2(const scalar_t* conv, scalar_t* output, index_t* indices,
                                int64_t planes, int64_t conv_h, int64_t conv_w);
template <typename scalar_t, typename index_t>
bool reference_relu_max_pool2x2_backward(const scalar_t* grad_output, const scalar_t* output,
                                         const index_t* indices, scalar_t* grad_conv,
                                         int64_t planes, int64_t conv_h, int64_t conv_w,
                                         int64_t* bad_index);

// The kernels a fused op chains, as kernels.h declares them, for one algorithm.
template <typename scalar_t, typename index_t>
struct Kernels {
  decltype(&conv2d_forward<scalar_t>) conv2d_forward;
  decltype(&conv2d_backward<scalar_t>) conv2d_backward;
  decltype(&relu_max_pool2x2<scalar_t, index_t>) relu_max_pool2x2;
  decltype(&relu_max_pool2x2_backward<scalar_t, index_t>) relu_max_pool2x2_backward;
  decltype(&linear_forward<scalar_t>) linear_forward;
  decltype(&linear_backward<scalar_t>) linear_backward;
};

template <typename scalar_t, typename index_t>
Kernels<scalar_t, index_t> kernels(Algorithm algorithm);

}  // namespace lenet_ext::cpu::fused
