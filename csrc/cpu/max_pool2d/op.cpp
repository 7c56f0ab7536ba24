// max_pool2d on CPU: the op's entry points (checks, allocation, then raw pointers), the run of the
// algorithm select.cpp picks (or the one a test forces), the backward's scatter over planes and
// its derivative's gather (max_pool2d_gather), and the internal ops tests use to see and force the
// choice. The algorithms are one a file here. bfloat16 and float16 run the float32 kernels on a
// few planes at a time widened into a per-thread buffer (in cache; never a float32 copy of the
// whole tensor), and narrow the results: exact, since a maximum is one of its inputs and a
// gradient cell the float32 sum of what its windows send it, rounded once.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/accumulate.h>

#include <atomic>
#include <optional>
#include <string>
#include <tuple>

#include "../../backward.h"
#include "../../max_pool2d.h"
#include "../convert.h"
#include "../parallel.h"
#include "algorithms.h"

namespace lenet_ext::cpu {
namespace max_pool2d {

template <typename scalar_t>
void forward(Algorithm algorithm, const scalar_t* input, scalar_t* output, int64_t* indices,
             int64_t planes, const PoolAxis& rows, const PoolAxis& cols) {
  switch (algorithm) {
    case Algorithm::kReference: return reference_forward(input, output, indices, planes, rows, cols);
    case Algorithm::kGeneral: return general_forward(input, output, indices, planes, rows, cols);
    case Algorithm::k2x2: return two_by_two_forward(input, output, indices, planes, rows, cols);
  }
}

// The forward of any dtype: float32 and float64 as they are, bfloat16 and float16 widened (see
// the top of the file) kWidenedPlanes input elements' worth of planes at a time.
constexpr int64_t kWidenedPlanes = int64_t(1) << 14;

template <typename scalar_t>
void forward_any(Algorithm algorithm, const scalar_t* input, scalar_t* output, int64_t* indices,
                 int64_t planes, const PoolAxis& rows, const PoolAxis& cols) {
  if constexpr (sizeof(scalar_t) != 2) {
    forward(algorithm, input, output, indices, planes, rows, cols);
  } else {
    const int64_t in_plane = rows.input * cols.input, out_plane = rows.output * cols.output;
    const int64_t chunk = std::max<int64_t>(1, kWidenedPlanes / std::max<int64_t>(1, in_plane));
    at::parallel_for(0, planes, grain(in_plane, kPoolTask), [&](int64_t begin, int64_t end) {
      float* wide_input = scratch<float>(Scratch::kWidened, chunk * in_plane);
      float* wide_output = scratch<float>(Scratch::kWidenedResult, chunk * out_plane);
      for (int64_t first = begin; first < end; first += chunk) {  // the kernels run serially here
        const int64_t count = std::min(chunk, end - first);
        to_float(input + first * in_plane, wide_input, count * in_plane);
        forward(algorithm, wide_input, wide_output, indices + first * out_plane, count, rows, cols);
        from_float(wide_output, output + first * out_plane, count * out_plane);
      }
    });
  }
}

// One plane's backward scatter in any dtype (bfloat16 and float16 widened, as above).
template <typename scalar_t>
bool scatter_any(const scalar_t* grad, const int64_t* where, int64_t out_plane,
                 scalar_t* plane_grad, int64_t in_plane, int64_t* bad_index) {
  if constexpr (sizeof(scalar_t) != 2) {
    return scatter_plane(grad, where, out_plane, plane_grad, in_plane, bad_index);
  } else {
    float* wide_grad = scratch<float>(Scratch::kWidened, out_plane);
    float* wide_plane = scratch<float>(Scratch::kWidenedResult, in_plane);
    to_float(grad, wide_grad, out_plane);
    const bool ok = scatter_plane(wide_grad, where, out_plane, wide_plane, in_plane, bad_index);
    from_float(wide_plane, plane_grad, in_plane);
    return ok;
  }
}

}  // namespace max_pool2d

namespace {

using max_pool2d::PoolAxis;

struct PoolCall {
  std::vector<int64_t> shape;
  PoolAxis rows, cols;
  int64_t planes;
};

PoolCall pool_call(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode,
                   const char* op) {
  auto shape = check_max_pool2d_args(input, kernel_size, stride, padding, dilation, ceil_mode, op);
  const PoolAxis rows{input.size(-2), shape[shape.size() - 2], kernel_size[0], stride[0],
                      padding[0], dilation[0]};
  const PoolAxis cols{input.size(-1), shape.back(), kernel_size[1], stride[1], padding[1],
                      dilation[1]};
  const int64_t planes = c10::multiply_integers(input.sizes().begin(), input.sizes().end() - 2);
  return {std::move(shape), rows, cols, planes};
}

// The op's forward; `algorithm` set (_max_pool2d_forced) runs that one, refusing unknown names and
// shapes it does not claim.
std::tuple<at::Tensor, at::Tensor> max_pool2d_run(const at::Tensor& input,
                                                  at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, bool ceil_mode,
                                                  std::optional<std::string_view> algorithm) {
  const char* op = algorithm ? "_max_pool2d_forced" : "max_pool2d";
  const PoolCall c = pool_call(input, kernel_size, stride, padding, dilation, ceil_mode, op);
  auto output = at::empty(c.shape, input.options());
  auto indices = at::empty(c.shape, input.options().dtype(at::kLong));
  const auto x = input.expect_contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(),
                                  "lenet_ext::max_pool2d", [&] {
    using kernel_t = std::conditional_t<sizeof(scalar_t) == 2, float, scalar_t>;  // widened
    auto chosen = max_pool2d::select<kernel_t>(c.rows, c.cols);
    if (algorithm) {
      const auto named = max_pool2d::algorithm_named(*algorithm);
      TORCH_CHECK(named.has_value(), "lenet_ext.", op, ": expected algorithm to be one of "
                  "reference, general, 2x2, but got '", *algorithm, "'");
      TORCH_CHECK(max_pool2d::claims<kernel_t>(*named, c.rows, c.cols), "lenet_ext.", op,
                  ": algorithm '", *algorithm, "' does not claim the forward of this shape (input ",
                  input.sizes(), ", kernel_size ", kernel_size, ", stride ", stride, ", padding ",
                  padding, ", dilation ", dilation, ", ceil_mode=", ceil_mode, ")");
      chosen = *named;
    }
    max_pool2d::forward_any(chosen, x->const_data_ptr<scalar_t>(),
                            output.mutable_data_ptr<scalar_t>(),
                            indices.mutable_data_ptr<int64_t>(), c.planes, c.rows, c.cols);
  });
  return {output, indices};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu(const at::Tensor& input,
                                                  at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, bool ceil_mode) {
  return max_pool2d_run(input, kernel_size, stride, padding, dilation, ceil_mode, std::nullopt);
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_forced_cpu(const at::Tensor& input,
                                                         at::IntArrayRef kernel_size,
                                                         at::IntArrayRef stride,
                                                         at::IntArrayRef padding,
                                                         at::IntArrayRef dilation, bool ceil_mode,
                                                         c10::string_view algorithm) {
  return max_pool2d_run(input, kernel_size, stride, padding, dilation, ceil_mode,
                        std::string_view(algorithm.data(), algorithm.size()));
}

// The algorithm select.cpp picks for the forward of a call.
std::string max_pool2d_algorithm_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, bool ceil_mode) {
  const PoolCall c = pool_call(input, kernel_size, stride, padding, dilation, ceil_mode,
                               "_max_pool2d_algorithm");
  std::string algorithm;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::_max_pool2d_algorithm", [&] {
    algorithm = max_pool2d::name(max_pool2d::select<scalar_t>(c.rows, c.cols));
  });
  return algorithm;
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                   at::IntArrayRef input_size) {
  check_max_pool2d_backward_args(grad_output, indices, input_size);
  auto grad_input = at::empty(input_size, grad_output.options());
  const int64_t in_plane = input_size[input_size.size() - 2] * input_size.back();
  const int64_t out_plane = grad_output.size(-2) * grad_output.size(-1);
  const int64_t planes = c10::multiply_integers(input_size.begin(), input_size.end() - 2);
  const auto [grad, idx] = contiguous(grad_output, indices);
  std::atomic<bool> found_bad_index{false};
  std::atomic<int64_t> bad_index{0};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_output.scalar_type(),
                                  "lenet_ext::max_pool2d_backward", [&] {
    const scalar_t* g = grad->const_data_ptr<scalar_t>();
    const int64_t* where = idx->const_data_ptr<int64_t>();
    scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes, grain(in_plane, kPoolTask), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        int64_t bad;
        if (!max_pool2d::scatter_any(g + plane * out_plane, where + plane * out_plane, out_plane,
                                     gi + plane * in_plane, in_plane, &bad)) {
          bad_index.store(bad, std::memory_order_relaxed);
          found_bad_index.store(true, std::memory_order_relaxed);
        }
      }
    });
  });
  check_indices_in_plane("max_pool2d_backward", found_bad_index.load(), bad_index.load(),
                         in_plane, input_size);
  return grad_input;
}

at::Tensor max_pool2d_gather_cpu(const at::Tensor& input, const at::Tensor& indices) {
  check_max_pool2d_gather_args(input, indices);
  auto output = at::empty(indices.sizes(), input.options());
  const int64_t in_plane = input.size(-2) * input.size(-1);
  const int64_t out_plane = indices.size(-2) * indices.size(-1);
  const int64_t planes = c10::multiply_integers(input.sizes().begin(), input.sizes().end() - 2);
  const auto [x, idx] = contiguous(input, indices);
  std::atomic<bool> found_bad_index{false};
  std::atomic<int64_t> bad_index{0};
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenet_ext::max_pool2d_gather", [&] {
    const scalar_t* in = x->const_data_ptr<scalar_t>();
    const int64_t* where = idx->const_data_ptr<int64_t>();
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes, grain(out_plane, kPoolTask), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        int64_t bad;
        if (!max_pool2d::gather_plane(in + plane * in_plane, where + plane * out_plane, out_plane,
                                      out + plane * out_plane, in_plane, &bad)) {
          bad_index.store(bad, std::memory_order_relaxed);
          found_bad_index.store(true, std::memory_order_relaxed);
        }
      }
    });
  });
  check_indices_in_plane("max_pool2d_gather", found_bad_index.load(), bad_index.load(), in_plane,
                         input.sizes());
  return output;
}

}  // namespace lenet_ext::cpu
