// linear's gemm algorithm, all three products on gemm.h's blocked GEMM, each operand read as
// stored through its strides (the packing does the transposes, nothing is materialised):
// output = input * weight^T (+ bias, written first), grad_input = grad_output * weight, and
// grad_weight = grad_output^T * input, whose K is the batch. Memory: the packed panels (L2/L3
// sized, per thread) and one pass over each operand per block of the other.
#include "../gemm.h"
#include "algorithms.h"

namespace lenet_ext::cpu::linear {

using gemm::Strided;

template <typename scalar_t>
void gemm_forward(const scalar_t* input, const scalar_t* weight, const scalar_t* bias,
                  scalar_t* output, const LinearShape& s) {
  if (bias)
    for (int64_t r = 0; r < s.rows; ++r) std::copy_n(bias, s.out_features, output + r * s.out_features);
  // [rows, out] = [rows, in] * [out, in]^T
  gemm::gemm(s.rows, s.out_features, s.in_features, Strided<scalar_t>{input, s.in_features, 1},
             Strided<scalar_t>{weight, 1, s.in_features}, output, s.out_features, bias != nullptr);
}

template <typename scalar_t>
void gemm_grad_input(const scalar_t* grad_output, const scalar_t* weight, scalar_t* grad_input,
                     const LinearShape& s) {
  // [rows, in] = [rows, out] * [out, in]
  gemm::gemm(s.rows, s.in_features, s.out_features, Strided<scalar_t>{grad_output, s.out_features, 1},
             Strided<scalar_t>{weight, s.in_features, 1}, grad_input, s.in_features);
}

template <typename scalar_t>
void gemm_grad_weight(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_weight,
                      const LinearShape& s) {
  // [out, in] = [rows, out]^T * [rows, in]
  gemm::gemm(s.out_features, s.in_features, s.rows, Strided<scalar_t>{grad_output, 1, s.out_features},
             Strided<scalar_t>{input, s.in_features, 1}, grad_weight, s.in_features);
}

LENET_EXT_LINEAR_FORWARD(gemm_forward)
LENET_EXT_LINEAR_GRAD(gemm_grad_input)
LENET_EXT_LINEAR_GRAD(gemm_grad_weight)

}  // namespace lenet_ext::cpu::linear
