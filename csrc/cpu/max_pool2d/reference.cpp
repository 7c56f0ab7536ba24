// max_pool2d's reference kernels: each window scanned tap by tap in torch's order (rows, then
// columns), taps in the padding skipped, a value taken when takes_over (greater, or NaN); the
// backward (its only algorithm) adds each output gradient at its argmax, and the backward's
// derivative reads each argmax back (a gather); op.cpp splits planes over threads, pointers passed
// by value so the scatter's stores do not force reloads. No vectors, no threads: the yardstick the
// tests hold the fast algorithms to. Memory: every tap is a load (kernel_h * kernel_w loads an
// output), fine for the test shapes and never selected for speed.
#include <algorithm>
#include <limits>

#include "algorithms.h"

namespace lenet_ext::cpu::max_pool2d {

template <typename scalar_t>
void reference_forward(const scalar_t* input, scalar_t* output, int64_t* indices, int64_t planes,
                       const PoolAxis& rows, const PoolAxis& cols) {
  const int64_t in_plane = rows.input * cols.input, out_plane = rows.output * cols.output;
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t oh = 0; oh < rows.output; ++oh)
      for (int64_t ow = 0; ow < cols.output; ++ow) {
        // torch's start: -inf at the first tap at or past the top-left corner of the input, also
        // for a window wholly in the padding, whose cell then lies outside the window
        scalar_t best = -std::numeric_limits<scalar_t>::infinity();
        int64_t best_cell = (rows.start(oh) + rows.first_tap(oh) * rows.dilation) * cols.input +
                            cols.start(ow) + cols.first_tap(ow) * cols.dilation;
        for (int64_t kh = 0; kh < rows.kernel; ++kh)
          for (int64_t kw = 0; kw < cols.kernel; ++kw) {
            const int64_t ih = rows.start(oh) + kh * rows.dilation;
            const int64_t iw = cols.start(ow) + kw * cols.dilation;
            if (ih < 0 || ih >= rows.input || iw < 0 || iw >= cols.input) continue;
            const int64_t cell = ih * cols.input + iw;
            if (takes_over(input[p * in_plane + cell], best))
              best = input[p * in_plane + cell], best_cell = cell;
          }
        output[p * out_plane + oh * cols.output + ow] = best;
        indices[p * out_plane + oh * cols.output + ow] = best_cell;
      }
}

template <typename scalar_t>
bool scatter_plane(const scalar_t* grad, const int64_t* where, int64_t out_plane,
                   scalar_t* plane_grad, int64_t in_plane, int64_t* bad_index) {
  std::fill(plane_grad, plane_grad + in_plane, scalar_t(0));
  bool ok = true;
  for (int64_t o = 0; o < out_plane; ++o) {
    // unsigned compare: negative indices fail it too
    if (static_cast<uint64_t>(where[o]) < static_cast<uint64_t>(in_plane)) {
      plane_grad[where[o]] += grad[o];
    } else {
      *bad_index = where[o];
      ok = false;
    }
  }
  return ok;
}

template <typename scalar_t>
bool gather_plane(const scalar_t* plane, const int64_t* where, int64_t out_plane, scalar_t* output,
                  int64_t in_plane, int64_t* bad_index) {
  bool ok = true;
  for (int64_t o = 0; o < out_plane; ++o) {
    if (static_cast<uint64_t>(where[o]) < static_cast<uint64_t>(in_plane)) {
      output[o] = plane[where[o]];
    } else {
      output[o] = scalar_t(0);
      *bad_index = where[o];
      ok = false;
    }
  }
  return ok;
}

LENET_EXT_MAX_POOL2D_FORWARD(reference_forward)
template bool scatter_plane(const float*, const int64_t*, int64_t, float*, int64_t, int64_t*);
template bool scatter_plane(const double*, const int64_t*, int64_t, double*, int64_t, int64_t*);
template bool gather_plane(const float*, const int64_t*, int64_t, float*, int64_t, int64_t*);
template bool gather_plane(const double*, const int64_t*, int64_t, double*, int64_t, int64_t*);

}  // namespace lenet_ext::cpu::max_pool2d
