// Autocast (torch.autocast, automatic mixed precision) for the ops whose stock counterparts are on
// autocast's lower-precision list: conv2d and linear, and the fused ops made of them. Their
// floating-point tensors are cast to the autocast dtype and the op runs again with autocast off,
// which is ATen's lower_precision_fp policy: cached_cast skips float64 and other devices' tensors,
// and keeps a parameter's cast for the rest of the autocast region. relu and max_pool2d follow
// their input, as stock's do: autocast's fallthrough passes them by, as it passes the backward
// ops, which autograd runs on the dtypes the forward saved.
// Only a thread inside an enabled autocast region dispatches to an Autocast key, so the ordinary
// path does not reach, or pay for, these kernels.
#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace {

template <c10::DeviceType device>
void lower_precision(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(device));
  const auto dtype = at::autocast::get_lower_precision_fp_from_device_type(device);
  const auto arguments = op.schema().arguments().size();
  for (auto it = stack->end() - arguments; it != stack->end(); ++it) {
    if (it->isTensor()) *it = at::autocast::cached_cast(dtype, it->toTensor(), device);
  }
  op.callBoxed(stack);
}

template <c10::DeviceType device>
void register_casts(torch::Library& m) {
  for (const char* op : {"conv2d", "linear", "conv2d_relu_max_pool2d", "lenet"}) {
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&lower_precision<device>>());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(lenet_ext, AutocastCPU, m) { register_casts<c10::DeviceType::CPU>(m); }
TORCH_LIBRARY_IMPL(lenet_ext, AutocastCUDA, m) { register_casts<c10::DeviceType::CUDA>(m); }
