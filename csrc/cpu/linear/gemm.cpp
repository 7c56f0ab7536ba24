// linear's gemm algorithm (backward): grad_input = grad_output * weight and grad_weight =
// grad_output^T * input as gemm.h's register tiles, reading grad_output as stored (row stride 1,
// k stride out_features for the transpose), so nothing is copied. Memory: weight (or input)
// streams through the tiles once per block of 6 output rows; grad_output is read as broadcasts.
// Each element is summed by one thread in a fixed order.
#include "../gemm.h"
#include "algorithms.h"

namespace lenet_ext::cpu::linear {

template <typename scalar_t>
void gemm_grad_input(const scalar_t* grad_output, const scalar_t* weight, scalar_t* grad_input,
                     const LinearShape& s) {
  // [rows, in] = [rows, out] * [out, in]
  gemm(grad_output, s.out_features, 1, weight, s.in_features, static_cast<const scalar_t*>(nullptr),
       grad_input, s.in_features, s.rows, s.out_features, s.in_features);
}

template <typename scalar_t>
void gemm_grad_weight(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_weight,
                      const LinearShape& s) {
  // [out, in] = [rows, out]^T * [rows, in]
  gemm(grad_output, 1, s.out_features, input, s.in_features, static_cast<const scalar_t*>(nullptr),
       grad_weight, s.in_features, s.out_features, s.rows, s.in_features);
}

LENET_EXT_LINEAR_GRAD(gemm_grad_input)
LENET_EXT_LINEAR_GRAD(gemm_grad_weight)

}  // namespace lenet_ext::cpu::linear
