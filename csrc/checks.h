// Argument checks shared by every op and both devices. Each message names the op, the argument,
// what was expected and what was given, because torch.ops.lenet_ext.* can be called directly and
// the user then sees nothing but this message.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace lenet_ext {

// The dtypes our kernels are written for.
inline bool is_supported_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble;
}

inline void check_dtype(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_supported_dtype(t), "lenet_ext.", op, ": expected ", arg,
                   " to have dtype float32 or float64, but got ", t.scalar_type());
}

// `t` must match the reference argument `ref` (named `ref_arg`) in dtype and device.
inline void check_same_dtype_device(const char* op, const char* arg, const at::Tensor& t,
                                    const char* ref_arg, const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "lenet_ext.", op, ": expected ", arg,
                   " to have the same dtype as ", ref_arg, " (", ref.scalar_type(), "), but got ",
                   t.scalar_type());
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

}  // namespace lenet_ext
