// linear's reference kernels: the definition as loop nests, each output or gradient element one
// sum in index order. No vectors, no threads: the yardstick the tests hold every fast algorithm
// to. Memory: weight is re-read for every row (rows * in * out loads), never selected for speed.
#include "algorithms.h"

namespace lenet_ext::cpu::linear {

template <typename scalar_t>
void reference_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                       scalar_t* output, const LinearShape& s) {
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t o = 0; o < s.out_features; ++o) {
      scalar_t sum = bias ? bias[o] : scalar_t(0);
      for (int64_t k = 0; k < s.in_features; ++k)
        sum += input[r * s.in_features + k] * weight[o * s.in_features + k];
      output[r * s.out_features + o] = sum;
    }
}

template <typename scalar_t>
void reference_backward(const scalar_t* grad_output, const scalar_t* input, const scalar_t* weight,
                        scalar_t* grad_input, scalar_t* grad_weight, scalar_t* grad_bias,
                        const LinearShape& s) {
  for (int64_t r = 0; grad_input && r < s.rows; ++r)  // grad_output * weight
    for (int64_t k = 0; k < s.in_features; ++k) {
      scalar_t sum = 0;
      for (int64_t o = 0; o < s.out_features; ++o)
        sum += grad_output[r * s.out_features + o] * weight[o * s.in_features + k];
      grad_input[r * s.in_features + k] = sum;
    }
  for (int64_t o = 0; grad_weight && o < s.out_features; ++o)  // grad_output^T * input
    for (int64_t k = 0; k < s.in_features; ++k) {
      scalar_t sum = 0;
      for (int64_t r = 0; r < s.rows; ++r)
        sum += grad_output[r * s.out_features + o] * input[r * s.in_features + k];
      grad_weight[o * s.in_features + k] = sum;
    }
  for (int64_t o = 0; grad_bias && o < s.out_features; ++o) {  // column sums
    scalar_t sum = 0;
    for (int64_t r = 0; r < s.rows; ++r) sum += grad_output[r * s.out_features + o];
    grad_bias[o] = sum;
  }
}

LENET_EXT_LINEAR_FORWARD(reference_forward)
template void reference_backward(const float*, const float*, const float*, float*, float*, float*,
                                 const LinearShape&);
template void reference_backward(const double*, const double*, const double*, double*, double*,
                                 double*, const LinearShape&);

}  // namespace lenet_ext::cpu::linear
