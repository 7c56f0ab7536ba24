// max_pool2d's CPU algorithms, one a file beside the reference (reference.cpp), and the selector
// that picks one from the shape (select.cpp). Every forward kernel pools `planes` contiguous
// planes (N * C) and writes torch's output and int64 indices (flat offsets into each input plane).
// The backward has one algorithm, the reference's scatter, run over planes by op.cpp.
// Defined for float and double.
#pragma once
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string_view>

#include "../../shapes.h"

namespace lenet_ext::cpu::max_pool2d {

// The pooling arithmetic of one spatial dimension.
struct PoolAxis {
  int64_t input, output, kernel, stride, padding, dilation;

  int64_t start(int64_t o) const { return o * stride - padding; }
  // taps [first_tap, end_tap) of window o fall inside the input
  int64_t first_tap(int64_t o) const { return first_tap_inside(start(o), dilation); }
  int64_t end_tap(int64_t o) const {
    return std::min(kernel, (input - start(o) + dilation - 1) / dilation);
  }
  // outputs [inner_begin, inner_end) have every tap inside the input
  int64_t inner_begin() const { return std::min(output, (padding + stride - 1) / stride); }
  int64_t inner_end() const {
    const int64_t last_start = input - dilated_extent(kernel, dilation);  // largest inner start
    if (last_start + padding < 0) return inner_begin();
    return std::clamp((last_start + padding) / stride + 1, inner_begin(), output);
  }
};

enum class Algorithm { kReference, kGeneral, k2x2 };

const char* name(Algorithm algorithm);
std::optional<Algorithm> algorithm_named(std::string_view name);

// Whether `algorithm` is written for this shape (the range tests force it on).
template <typename scalar_t>
bool claims(Algorithm algorithm, const PoolAxis& rows, const PoolAxis& cols);

// The algorithm the forward runs on this shape: select.cpp's table.
template <typename scalar_t>
Algorithm select(const PoolAxis& rows, const PoolAxis& cols);

template <typename scalar_t>
void forward(Algorithm algorithm, const scalar_t* input, scalar_t* output, int64_t* indices,
             int64_t planes, const PoolAxis& rows, const PoolAxis& cols);

// ---- the algorithms (each file's opening comment says how it works) ----

template <typename scalar_t>
void reference_forward(const scalar_t* input, scalar_t* output, int64_t* indices, int64_t planes,
                       const PoolAxis& rows, const PoolAxis& cols);
// One plane's gradient: zeroed, then each output gradient added at its argmax in output order.
// False, with *bad_index set, if an index lies outside the plane (the backward's one algorithm).
template <typename scalar_t>
bool scatter_plane(const scalar_t* grad, const int64_t* where, int64_t out_plane,
                   scalar_t* plane_grad, int64_t in_plane, int64_t* bad_index);
// Its adjoint, the backward's derivative (max_pool2d_gather): each output takes the plane's value at
// its index (0 and false, with *bad_index set, for an index outside the plane).
template <typename scalar_t>
bool gather_plane(const scalar_t* plane, const int64_t* where, int64_t out_plane, scalar_t* output,
                  int64_t in_plane, int64_t* bad_index);

template <typename scalar_t>
void general_forward(const scalar_t* input, scalar_t* output, int64_t* indices, int64_t planes,
                     const PoolAxis& rows, const PoolAxis& cols);
template <typename scalar_t>
void two_by_two_forward(const scalar_t* input, scalar_t* output, int64_t* indices, int64_t planes,
                        const PoolAxis& rows, const PoolAxis& cols);

}  // namespace lenet_ext::cpu::max_pool2d

// Explicit instantiation for float and double of a forward kernel, at the end of each file.
#define LENET_EXT_MAX_POOL2D_FORWARD(fn)                                                      \
  template void fn(const float*, float*, int64_t*, int64_t, const PoolAxis&, const PoolAxis&); \
  template void fn(const double*, double*, int64_t*, int64_t, const PoolAxis&, const PoolAxis&);
