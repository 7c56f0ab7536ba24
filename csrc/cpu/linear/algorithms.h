// linear's CPU algorithms, one a file beside the reference (reference.cpp), and the selector that
// picks one per pass from the shape (select.cpp). input [rows, in_features], weight
// [out_features, in_features], output [rows, out_features], all contiguous; gradients are
// written, not added to. Defined for float and double.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>

#include "../names.h"

namespace lenet_ext::cpu::linear {

using cpu::name;
using cpu::Pass;
using cpu::pass_named;

enum class Algorithm { kReference, kDot, kAxpy, kGemm };

// Multiply-adds a task of a batch-1 pass holds (a GEMV, or the axpys of a gradient): each streams
// its share of a weight-sized operand from memory once, so a second thread, which brings its own
// core's bandwidth, pays for its fork from a much smaller task than a cached product does.
constexpr int64_t kStreamedTask = int64_t(1) << 15;

// The sizes of one call.
struct LinearShape {
  int64_t rows, in_features, out_features;
};

const char* name(Algorithm algorithm);
std::optional<Algorithm> algorithm_named(std::string_view name);

// Whether `algorithm` is written for this pass and shape (the range tests force it on).
template <typename scalar_t>
bool claims(Algorithm algorithm, Pass pass, const LinearShape& s);

// The algorithm a pass runs on this shape: select.cpp's table.
template <typename scalar_t>
Algorithm select(Pass pass, const LinearShape& s);

template <typename scalar_t>
void forward(Algorithm algorithm, const scalar_t* input, const scalar_t* weight,
             const scalar_t* bias, scalar_t* output, const LinearShape& s);
// grad_input, grad_weight or grad_bias null: not wanted. grad_bias has one kernel (op.cpp).
template <typename scalar_t>
void backward(Algorithm grad_input_algorithm, Algorithm grad_weight_algorithm,
              const scalar_t* grad_output, const scalar_t* input, const scalar_t* weight,
              scalar_t* grad_input, scalar_t* grad_weight, scalar_t* grad_bias,
              const LinearShape& s);

// ---- the algorithms (each file's opening comment says how it works) ----

template <typename scalar_t>
void reference_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                       scalar_t* output, const LinearShape& s);
template <typename scalar_t>
void reference_backward(const scalar_t* grad_output, const scalar_t* input, const scalar_t* weight,
                        scalar_t* grad_input, scalar_t* grad_weight, scalar_t* grad_bias,
                        const LinearShape& s);

template <typename scalar_t>
void dot_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                 scalar_t* output, const LinearShape& s);
template <typename scalar_t>
void gemm_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                    scalar_t* output, const LinearShape& s);

template <typename scalar_t>
void axpy_grad_input(const scalar_t* grad_output, const scalar_t* weight, scalar_t* grad_input,
                     const LinearShape& s);
template <typename scalar_t>
void axpy_grad_weight(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_weight,
                      const LinearShape& s);
template <typename scalar_t>
void gemm_grad_input(const scalar_t* grad_output, const scalar_t* weight, scalar_t* grad_input,
                     const LinearShape& s);
template <typename scalar_t>
void gemm_grad_weight(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_weight,
                      const LinearShape& s);

}  // namespace lenet_ext::cpu::linear

// Explicit instantiation for float and double, at the end of each algorithm's file.
#define LENET_EXT_LINEAR_FORWARD(fn)                                                          \
  template void fn(const float*, const float*, const float*, float*, const LinearShape&);      \
  template void fn(const double*, const double*, const double*, double*, const LinearShape&);
#define LENET_EXT_LINEAR_GRAD(fn)                                                             \
  template void fn(const float*, const float*, float*, const LinearShape&);                    \
  template void fn(const double*, const double*, double*, const LinearShape&);
