// linear's axpy algorithm (backward, a few rows: batch 1): each gradient row is a sum of weight or
// input rows scaled by grad_output elements. grad_input is summed over out_features four weight
// rows a pass (one FMA chain per element, terms in order): each four are read once, in order, and
// added into every gradient row, which is read and written once per four; grad_weight's rows are
// written once each. gemm's register tiles would sum over k = rows for grad_weight, and their
// setup and stores cost more than so short a sum. Memory: the pass streams weight (grad_input) or
// writes grad_weight once: both threads take a share, grad_input's by columns, grad_weight's by
// rows, so no sum is split across threads.
#include <ATen/Parallel.h>

#include <algorithm>

#include "../parallel.h"
#include "algorithms.h"

namespace lenet_ext::cpu::linear {

template <typename scalar_t>
void axpy_grad_input(const scalar_t* grad_output, const scalar_t* weight, scalar_t* grad_input,
                     const LinearShape& s) {
  const int64_t in = s.in_features, out = s.out_features;
  // columns in whole cache lines, so that no line is written by both threads
  constexpr int64_t kLine = 64 / sizeof(scalar_t);
  const int64_t lines = (in + kLine - 1) / kLine;
  at::parallel_for(0, lines, grain(kLine * out * s.rows, kStreamedTask), [&](int64_t begin,
                                                                             int64_t end) {
    const int64_t c0 = begin * kLine, c1 = std::min(in, end * kLine);
    for (int64_t r = 0; r < s.rows; ++r) std::fill(grad_input + r * in + c0, grad_input + r * in + c1,
                                                   scalar_t(0));
    // four weight rows at a time, streamed once, each added into every gradient row (which stay
    // in cache, a thread's columns of them)
    int64_t o = 0;
    for (; o + 4 <= out; o += 4) {
      const scalar_t* __restrict w = weight + o * in;
      for (int64_t r = 0; r < s.rows; ++r) {
        const scalar_t* g = grad_output + r * out + o;
        const scalar_t g0 = g[0], g1 = g[1], g2 = g[2], g3 = g[3];
        scalar_t* __restrict y = grad_input + r * in;
        for (int64_t c = c0; c < c1; ++c) {
          scalar_t sum = y[c];
          sum += g0 * w[c];
          sum += g1 * w[in + c];
          sum += g2 * w[2 * in + c];
          sum += g3 * w[3 * in + c];
          y[c] = sum;
        }
      }
    }
    for (; o < out; ++o) {
      const scalar_t* __restrict w = weight + o * in;
      for (int64_t r = 0; r < s.rows; ++r) {
        const scalar_t g = grad_output[r * out + o];
        scalar_t* __restrict y = grad_input + r * in;
        for (int64_t c = c0; c < c1; ++c) y[c] += g * w[c];
      }
    }
  });
}

template <typename scalar_t>
void axpy_grad_weight(const scalar_t* grad_output, const scalar_t* input, scalar_t* grad_weight,
                      const LinearShape& s) {
  const int64_t in = s.in_features, out = s.out_features;
  at::parallel_for(0, out, grain(in * std::max<int64_t>(1, s.rows), kStreamedTask),
                   [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      scalar_t* __restrict y = grad_weight + o * in;
      if (s.rows == 0) std::fill_n(y, in, scalar_t(0));
      for (int64_t r = 0; r < s.rows; ++r) {
        const scalar_t g = grad_output[r * out + o];
        const scalar_t* __restrict x = input + r * in;
        if (r == 0)
          for (int64_t c = 0; c < in; ++c) y[c] = g * x[c];
        else
          for (int64_t c = 0; c < in; ++c) y[c] += g * x[c];
      }
    }
  });
}

LENET_EXT_LINEAR_GRAD(axpy_grad_input)
LENET_EXT_LINEAR_GRAD(axpy_grad_weight)

}  // namespace lenet_ext::cpu::linear
