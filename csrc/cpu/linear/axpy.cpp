// linear's axpy algorithm (backward, a few rows: batch 1): each gradient row is a sum of a few
// weight or input rows scaled by grad_output elements, a vectorised axpy per term, the first one
// writing. gemm's register tiles would sum over k = rows for grad_weight, and their setup and
// stores cost more than so short a sum; a zeroing pass first would double the stores of
// grad_weight. Memory: grad_weight is written once (first term) and read-modify-written once per
// further row; grad_input reads weight once per row. One thread, terms in row order.
#include <algorithm>

#include "algorithms.h"

namespace lenet_ext::cpu::linear {
namespace {

// y[i] = a * x[i] (kAdd: +=) for i < n
template <bool kAdd, typename scalar_t>
inline void axpy(scalar_t a, const scalar_t* __restrict x, scalar_t* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = kAdd ? y[i] + a * x[i] : a * x[i];
}

}  // namespace

template <typename scalar_t>
void axpy_grad_input(const scalar_t* grad_output, const scalar_t* weight, scalar_t* grad_input,
                     const LinearShape& s) {
  for (int64_t r = 0; r < s.rows; ++r) {
    scalar_t* out = grad_input + r * s.in_features;
    std::fill_n(out, s.in_features, scalar_t(0));
    for (int64_t o = 0; o < s.out_features; ++o)
      axpy<true>(grad_output[r * s.out_features + o], weight + o * s.in_features, out,
                 s.in_features);
  }
}

template <typename scalar_t>
void axpy_grad_weight(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_weight,
                      const LinearShape& s) {
  if (s.rows == 0) std::fill_n(grad_weight, s.out_features * s.in_features, scalar_t(0));
  for (int64_t o = 0; s.rows > 0 && o < s.out_features; ++o) {
    scalar_t* out = grad_weight + o * s.in_features;
    axpy<false>(grad_output[o], input, out, s.in_features);
    for (int64_t r = 1; r < s.rows; ++r)
      axpy<true>(grad_output[r * s.out_features + o], input + r * s.in_features, out,
                 s.in_features);
  }
}

LENET_EXT_LINEAR_GRAD(axpy_grad_input)
LENET_EXT_LINEAR_GRAD(axpy_grad_weight)

}  // namespace lenet_ext::cpu::linear
