// The CUDA entry points of every lenet_ext op, compiled only in CUDA builds. Each runs the checks
// the CPU entry point runs (the shared csrc/<op>.h headers), then on the input's device and
// PyTorch's current stream (never the default one: CUDA graphs and torch.compile capture the
// current stream) makes inputs contiguous, allocates outputs and launches the kernels of
// csrc/cuda/<op>.cu, checking every launch.
//
// The emulated build (LENET_EXT_CUDA_EMULATED) compiles this same file with the kernels run by
// HIP-CPU and registers it at the CPU key in place of the CPU kernels, so the op tests exercise
// these entry points and kernels on CPU tensors. Only the device plumbing differs, below.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../backward.h"
#include "../checks.h"
#include "../conv2d.h"
#include "../linear.h"
#include "../max_pool2d.h"
#include "kernels.h"

#if defined(LENET_EXT_CUDA_EMULATED)

#define LENET_EXT_KERNEL_KEY CPU
// HIP-CPU launches are asynchronous: wait for the kernel before its output reaches PyTorch.
#define LENET_EXT_LAUNCH_CHECK()                                                              \
  TORCH_CHECK(hipStreamSynchronize(nullptr) == hipSuccess && hipGetLastError() == hipSuccess, \
              "lenet_ext: an emulated CUDA kernel failed")

namespace lenet_ext {
namespace {

struct DeviceGuard {  // CPU tensors: no device to select
  explicit DeviceGuard(c10::Device) {}
};
cudaStream_t current_stream() { return nullptr; }  // HIP-CPU's null stream
bool stream_is_capturing(cudaStream_t) { return false; }

#else

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#define LENET_EXT_KERNEL_KEY CUDA
#define LENET_EXT_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()

namespace lenet_ext {
namespace {

using DeviceGuard = c10::cuda::CUDAGuard;
// The current stream of the current device: call it after the device guard.
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }
// A stream being captured into a CUDA graph must not be waited on.
bool stream_is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  return capture != cudaStreamCaptureStatusNone;
}

#endif

// The kernels' storage type for a dispatched scalar_t: CUDA's bfloat16 and half for ATen's (the
// same 2-byte layout, so data pointers are reinterpreted, never converted), float and double as
// they are.
template <typename scalar_t>
struct KernelScalar {
  using type = scalar_t;
};
template <>
struct KernelScalar<at::BFloat16> {
  using type = __nv_bfloat16;
};
template <>
struct KernelScalar<at::Half> {
  using type = __half;
};
template <typename scalar_t>
using kernel_t = typename KernelScalar<scalar_t>::type;
static_assert(sizeof(__nv_bfloat16) == sizeof(at::BFloat16) && sizeof(__half) == sizeof(at::Half));

template <typename scalar_t>
const kernel_t<scalar_t>* const_data(const at::Tensor& t) {
  return reinterpret_cast<const kernel_t<scalar_t>*>(t.const_data_ptr<scalar_t>());
}
template <typename scalar_t>
const kernel_t<scalar_t>* const_data(const std::optional<at::Tensor>& t) {  // null if none
  return reinterpret_cast<const kernel_t<scalar_t>*>(optional_data<scalar_t>(t));
}
template <typename scalar_t>
kernel_t<scalar_t>* mutable_data(at::Tensor& t) {
  return reinterpret_cast<kernel_t<scalar_t>*>(t.mutable_data_ptr<scalar_t>());
}

// Every entry point dispatches over the same four dtypes.
#define LENET_EXT_DISPATCH(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, name, __VA_ARGS__)

// relu --------------------------------------------------------------------------------------------

at::Tensor relu_cuda(const at::Tensor& input) {
  check_dtype("relu", "input", input);
  const DeviceGuard guard(input.device());
  const auto x = input.expect_contiguous();
  auto output = at::empty(input.sizes(), input.options());
  LENET_EXT_DISPATCH(input.scalar_type(), "lenet_ext::relu", [&] {
    cuda::launch_relu(const_data<scalar_t>(*x), mutable_data<scalar_t>(output), x->numel(),
                      current_stream());
    LENET_EXT_LAUNCH_CHECK();
  });
  return output;
}

at::Tensor relu_backward_cuda(const at::Tensor& grad_output, const at::Tensor& result) {
  check_dtype("relu_backward", "result", result);
  check_same_dtype_device("relu_backward", "grad_output", grad_output, "result", result);
  check_same_shape("relu_backward", "grad_output", grad_output, result.sizes());
  const DeviceGuard guard(result.device());
  const auto [grad, y] = contiguous(grad_output, result);
  auto grad_input = at::empty(result.sizes(), result.options());
  LENET_EXT_DISPATCH(result.scalar_type(), "lenet_ext::relu_backward", [&] {
    cuda::launch_relu_backward(const_data<scalar_t>(*grad), const_data<scalar_t>(*y),
                               mutable_data<scalar_t>(grad_input), y->numel(),
                               current_stream());
    LENET_EXT_LAUNCH_CHECK();
  });
  return grad_input;
}

// linear ------------------------------------------------------------------------------------------


at::Tensor linear_cuda(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias) {
  check_linear_args(input, weight, bias);
  const DeviceGuard guard(input.device());
  const int64_t in_features = weight.size(1), out_features = weight.size(0);
  auto output = at::empty(linear_output_shape(input, weight), input.options());
  const auto [x, w] = contiguous(input, weight);
  const auto b = contiguous_bias(bias);
  LENET_EXT_DISPATCH(input.scalar_type(), "lenet_ext::linear", [&] {
    cuda::launch_linear(const_data<scalar_t>(*x), const_data<scalar_t>(*w),
                        const_data<scalar_t>(b), mutable_data<scalar_t>(output),
                        linear_rows(input), in_features, out_features, current_stream());
    LENET_EXT_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> output_mask) {
  check_linear_backward_args(grad_output, input, weight);
  const DeviceGuard guard(input.device());
  const int64_t in_features = weight.size(1), out_features = weight.size(0);
  const int64_t rows = linear_rows(input);
  const auto [grad, x, w] = contiguous(grad_output, input, weight);
  auto [grad_input, grad_weight, grad_bias] = empty_grads(input, weight, output_mask);
  const cudaStream_t stream = current_stream();
  LENET_EXT_DISPATCH(input.scalar_type(), "lenet_ext::linear_backward", [&] {
    const auto* g = const_data<scalar_t>(*grad);
    if (grad_input.defined()) {
      cuda::launch_linear_grad_input(g, const_data<scalar_t>(*w),
                                     mutable_data<scalar_t>(grad_input), rows, in_features,
                                     out_features, stream);
      LENET_EXT_LAUNCH_CHECK();
    }
    if (grad_weight.defined()) {
      cuda::launch_linear_grad_weight(g, const_data<scalar_t>(*x),
                                      mutable_data<scalar_t>(grad_weight), rows, in_features,
                                      out_features, stream);
      LENET_EXT_LAUNCH_CHECK();
    }
    if (grad_bias.defined()) {
      cuda::launch_linear_grad_bias(g, mutable_data<scalar_t>(grad_bias), rows, out_features,
                                    stream);
      LENET_EXT_LAUNCH_CHECK();
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

// conv2d ------------------------------------------------------------------------------------------

// The kernels' view of a checked conv2d call; out_h and out_w from the (checked) output shape.
cuda::Conv2dShape conv2d_shape(const at::Tensor& input, const at::Tensor& weight, int64_t out_h,
                               int64_t out_w, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups) {
  return {input.size(0),  input.size(1), input.size(2),  input.size(3),  weight.size(0),
          out_h,          out_w,         weight.size(2), weight.size(3), stride[0],
          stride[1],      padding[0],    padding[1],     dilation[0],    dilation[1],
          groups};
}

at::Tensor conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto output_shape =
      check_conv2d_args(input, weight, bias, stride, padding, dilation, groups);
  const DeviceGuard guard(input.device());
  const auto shape = conv2d_shape(input, weight, output_shape[2], output_shape[3], stride,
                                  padding, dilation, groups);
  auto output = at::empty(output_shape, input.options());
  const auto [x, w] = contiguous(input, weight);
  const auto b = contiguous_bias(bias);
  LENET_EXT_DISPATCH(input.scalar_type(), "lenet_ext::conv2d", [&] {
    cuda::launch_conv2d(const_data<scalar_t>(*x), const_data<scalar_t>(*w),
                        const_data<scalar_t>(b), mutable_data<scalar_t>(output), shape,
                        current_stream());
    LENET_EXT_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  check_conv2d_backward_args(grad_output, input, weight, stride, padding, dilation, groups);
  const DeviceGuard guard(input.device());
  const auto shape = conv2d_shape(input, weight, grad_output.size(2), grad_output.size(3), stride,
                                  padding, dilation, groups);
  const auto [grad, x, w] = contiguous(grad_output, input, weight);
  auto [grad_input, grad_weight, grad_bias] = empty_grads(input, weight, output_mask);
  const cudaStream_t stream = current_stream();
  LENET_EXT_DISPATCH(input.scalar_type(), "lenet_ext::conv2d_backward", [&] {
    const auto* g = const_data<scalar_t>(*grad);
    if (grad_input.defined()) {
      cuda::launch_conv2d_grad_input(g, const_data<scalar_t>(*w),
                                     mutable_data<scalar_t>(grad_input), shape, stream);
      LENET_EXT_LAUNCH_CHECK();
    }
    if (grad_weight.defined()) {
      cuda::launch_conv2d_grad_weight(g, const_data<scalar_t>(*x),
                                      mutable_data<scalar_t>(grad_weight), shape, stream);
      LENET_EXT_LAUNCH_CHECK();
    }
    if (grad_bias.defined()) {
      cuda::launch_conv2d_grad_bias(g, mutable_data<scalar_t>(grad_bias), shape, stream);
      LENET_EXT_LAUNCH_CHECK();
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

// max_pool2d --------------------------------------------------------------------------------------

// Planes of a 3-D or 4-D shape: the product of all but its last two sizes.
int64_t pool_planes(at::IntArrayRef sizes) {
  return c10::multiply_integers(sizes.begin(), sizes.end() - 2);
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cuda(const at::Tensor& input,
                                                   at::IntArrayRef kernel_size,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, bool ceil_mode) {
  const auto output_shape =
      check_max_pool2d_args(input, kernel_size, stride, padding, dilation, ceil_mode);
  const DeviceGuard guard(input.device());
  const int64_t rank = input.dim();
  const at::IntArrayRef window_stride = stride.empty() ? kernel_size : stride;  // torch's default
  const cuda::Pool2dShape shape{pool_planes(input.sizes()), input.size(-2), input.size(-1),
                                output_shape[rank - 2],     output_shape[rank - 1],
                                kernel_size[0],             kernel_size[1],
                                window_stride[0],           window_stride[1],
                                padding[0],                 padding[1],
                                dilation[0],                dilation[1]};
  const auto x = input.expect_contiguous();
  auto output = at::empty(output_shape, input.options());
  auto indices = at::empty(output_shape, input.options().dtype(at::kLong));
  LENET_EXT_DISPATCH(input.scalar_type(), "lenet_ext::max_pool2d", [&] {
    cuda::launch_max_pool2d(const_data<scalar_t>(*x), mutable_data<scalar_t>(output),
                            indices.mutable_data_ptr<int64_t>(), shape, current_stream());
    LENET_EXT_LAUNCH_CHECK();
  });
  return {output, indices};
}

at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices,
                                    at::IntArrayRef input_size) {
  check_max_pool2d_backward_args(grad_output, indices, input_size);
  const DeviceGuard guard(grad_output.device());
  const int64_t in_h = input_size[input_size.size() - 2], in_w = input_size.back();
  const int64_t out_plane = grad_output.size(-2) * grad_output.size(-1);
  const auto [grad, index] = contiguous(grad_output, indices);
  auto grad_input = at::empty(input_size, grad_output.options());
  auto bad_index = at::zeros({2}, grad_output.options().dtype(at::kLong));  // found, which
  const cudaStream_t stream = current_stream();
  LENET_EXT_DISPATCH(grad_output.scalar_type(), "lenet_ext::max_pool2d_backward", [&] {
    // a 2-byte dtype's sums, in float until their one rounding into grad_input (kernels.h); freed
    // after the launch, which the stream orders before any reuse of the memory
    using acc = cuda::acc_t<kernel_t<scalar_t>>;
    at::Tensor sums;
    if constexpr (!std::is_same_v<acc, kernel_t<scalar_t>>)
      sums = at::empty(input_size, grad_output.options().dtype(at::kFloat));
    cuda::launch_max_pool2d_backward(const_data<scalar_t>(*grad), index->const_data_ptr<int64_t>(),
                                     mutable_data<scalar_t>(grad_input),
                                     sums.defined() ? sums.mutable_data_ptr<acc>() : nullptr,
                                     pool_planes(input_size), in_h * in_w, out_plane,
                                     bad_index.mutable_data_ptr<int64_t>(), stream);
    LENET_EXT_LAUNCH_CHECK();
  });
  // Reading the flag waits for the kernel. A stream being captured into a CUDA graph must not
  // wait, so there the check is skipped: the kernel still never follows a bad index.
  if (!stream_is_capturing(stream)) {
    const auto found = bad_index.cpu();
    const int64_t* report = found.const_data_ptr<int64_t>();
    check_indices_in_plane("max_pool2d_backward", report[0] != 0, report[1], in_h * in_w,
                           input_size);
  }
  return grad_input;
}

at::Tensor max_pool2d_gather_cuda(const at::Tensor& input, const at::Tensor& indices) {
  check_max_pool2d_gather_args(input, indices);
  const DeviceGuard guard(input.device());
  const int64_t in_plane = input.size(-2) * input.size(-1);
  const auto [x, index] = contiguous(input, indices);
  auto output = at::empty(indices.sizes(), input.options());
  auto bad_index = at::zeros({2}, input.options().dtype(at::kLong));  // found, which
  const cudaStream_t stream = current_stream();
  LENET_EXT_DISPATCH(input.scalar_type(), "lenet_ext::max_pool2d_gather", [&] {
    cuda::launch_max_pool2d_gather(const_data<scalar_t>(*x), index->const_data_ptr<int64_t>(),
                                   mutable_data<scalar_t>(output), pool_planes(input.sizes()),
                                   in_plane, indices.size(-2) * indices.size(-1),
                                   bad_index.mutable_data_ptr<int64_t>(), stream);
    LENET_EXT_LAUNCH_CHECK();
  });
  if (!stream_is_capturing(stream)) {  // as in max_pool2d_backward_cuda
    const auto found = bad_index.cpu();
    const int64_t* report = found.const_data_ptr<int64_t>();
    check_indices_in_plane("max_pool2d_gather", report[0] != 0, report[1], in_plane,
                           input.sizes());
  }
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(lenet_ext, LENET_EXT_KERNEL_KEY, m) {
  m.impl("relu", &relu_cuda);
  m.impl("relu_backward", &relu_backward_cuda);
  m.impl("linear", &linear_cuda);
  m.impl("linear_backward", &linear_backward_cuda);
  m.impl("conv2d", &conv2d_cuda);
  m.impl("conv2d_backward", &conv2d_backward_cuda);
  m.impl("max_pool2d", &max_pool2d_cuda);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cuda);
  m.impl("max_pool2d_gather", &max_pool2d_gather_cuda);
}

}  // namespace lenet_ext
