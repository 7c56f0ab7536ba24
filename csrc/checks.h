// Argument checks shared by every op and both devices. Each message names the op, the argument,
// what was expected and what was given, because torch.ops.lenet_ext.* can be called directly and
// the user then sees nothing but this message.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>

namespace lenet_ext {

// The dtypes of the ops: float32 and float64, and bfloat16 and float16 with float32 accumulation.
inline bool is_supported_dtype(const at::Tensor& t) {
  const auto dtype = t.scalar_type();
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
         dtype == at::kHalf;
}

// While a bfloat16 or float16 call runs on float32 copies (cpu/widen.h), its dtype: the checks
// then name, and size outputs by, the dtype the call was made with.
inline thread_local std::optional<at::ScalarType> widened_from;

inline at::ScalarType given_dtype(const at::Tensor& t) {
  return widened_from && t.scalar_type() == at::kFloat ? *widened_from : t.scalar_type();
}

inline void check_dtype(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_supported_dtype(t), "lenet_ext.", op, ": expected ", arg,
                   " to have dtype float32, float64, bfloat16 or float16, but got ", given_dtype(t));
}

// `t` must match the reference argument `ref` (named `ref_arg`) in dtype and device.
inline void check_same_dtype_device(const char* op, const char* arg, const at::Tensor& t,
                                    const char* ref_arg, const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "lenet_ext.", op, ": expected ", arg,
                   " to have the same dtype as ", ref_arg, " (", given_dtype(ref), "), but got ",
                   given_dtype(t));
  TORCH_CHECK(t.device() == ref.device(), "lenet_ext.", op, ": expected ", arg,
              " to be on the same device as ", ref_arg, " (", ref.device(), "), but got ",
              t.device());
}

inline void check_dim(const char* op, const char* arg, const at::Tensor& t, int64_t dim,
                      const char* layout) {
  TORCH_CHECK(t.dim() == dim, "lenet_ext.", op, ": expected ", arg, " to be a ", dim,
              "-D tensor ", layout, ", but got a ", t.dim(), "-D tensor of shape ", t.sizes());
}

// Same shape as a reference argument (gradients against the tensors they belong to).
inline void check_same_shape(const char* op, const char* arg, const at::Tensor& t,
                             at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, "lenet_ext.", op, ": expected ", arg, " of shape ", expected,
              ", but got shape ", t.sizes());
}

inline void check_array_size(const char* op, const char* arg, at::IntArrayRef values, size_t size) {
  TORCH_CHECK(values.size() == size, "lenet_ext.", op, ": expected ", arg, " to have ", size,
              " elements, but got ", values.size(), " (", values, ")");
}

// Kernel sizes, strides, paddings and dilations of at most 2^31 - 1, as torch's pooling requires:
// the kernels' output-size and index arithmetic then stays inside int64 for any tensor (sizes below
// 2^62), where a stride of 2^63 - 1 made it wrap and conv2d silently return zeros.
inline void check_int32_range(const char* op, const char* arg, at::IntArrayRef values) {
  for (const int64_t value : values) {
    TORCH_CHECK(value <= std::numeric_limits<int32_t>::max(), "lenet_ext.", op, ": expected ", arg,
                " to be at most 2147483647 (2^31 - 1), but got ", values);
  }
}

// An output of 2^63 bytes or more cannot be allocated (nor strided, even when a size is 0): refuse
// it by name rather than leave the allocator to fail with a message that names no op.
inline void check_output_fits(const char* op, at::IntArrayRef shape, const at::Tensor& like) {
  uint64_t bytes = c10::elementSize(given_dtype(like));
  bool overflows = false;
  for (const int64_t size : shape) {
    overflows |= c10::mul_overflows(bytes, static_cast<uint64_t>(std::max<int64_t>(size, 1)), &bytes);
  }
  TORCH_CHECK(!overflows && bytes <= std::numeric_limits<int64_t>::max(), "lenet_ext.", op,
              ": expected an output whose sizes (0 counted as 1) multiply to fewer than 2^63 bytes, "
              "but its shape would be ", shape, " of ", given_dtype(like));
}

}  // namespace lenet_ext
