// Autograd of every op, in C++, registered at the Autograd key for every device. Each forward op
// saves what its backward op needs and asks that op only for the gradients autograd wants
// (output_mask); a call without grad goes straight to the kernel (Python's
// torch.library.register_autograd costs several times a batch-1 kernel per call).
// One style for every op: a hand-written autograd Node, as ATen's generated ops record, not a
// torch::autograd::Function, whose bookkeeping (CppNode, its mutex, output wrapping, saved-variable
// lists) costs more per forward+backward than the batch-1 kernels (docs/performance.md, autograd).
// The backward ops have nodes of their own (double backward), whose gradients are our ops again,
// so they are differentiable in turn. Every node type has a Python type of its name
// (autograd_node_types, csrc/node_names.cpp), as ATen's nodes do.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/add.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace lenet_ext {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// The dispatcher's handle of lenet_ext::<name>, looked up once per op.
template <typename Signature>
c10::TypedOperatorHandle<Signature> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Calls below the Autograd key: the device kernel (or, under torch.compile, the fake one).
template <typename Signature, typename... Args>
auto call_below_autograd(const c10::TypedOperatorHandle<Signature>& op, Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(std::forward<Args>(args)...);
}

// An op called from a node. Through the Autograd key only while the backward itself is recorded
// (create_graph=True), where the op records its node and the gradient is differentiable again.
// Otherwise straight to the kernel: the Autograd kernel would only find nothing to record, which
// costs a little every call.
template <typename Signature, typename... Args>
auto call_backward(const c10::TypedOperatorHandle<Signature>& op, Args&&... args) {
  if (at::GradMode::is_enabled()) return op.call(std::forward<Args>(args)...);
  return call_below_autograd(op, std::forward<Args>(args)...);
}

bool wants_grad(std::initializer_list<const at::Tensor*> tensors) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : tensors)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

// None of the ops has a tangent (jvp) formula. Their outputs would carry no tangent, so forward-mode
// AD would silently give a zero derivative: refuse a tangent instead, as ATen refuses one for an op
// without a formula. functorch's jvp and jacfwd also put their tangents at forward-AD level 0.
// It is the check ATen's generated ops make: ~10 ns a tensor without autograd metadata, ~25-30 ns
// one with it (a lock), ~50-65 ns a view (its base is asked too).
void check_no_tangent(const char* op, std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors)
    TORCH_CHECK_NOT_IMPLEMENTED(
        !(t->defined() && t->_fw_grad(/*level=*/0).defined()), op,
        ": forward-mode AD (torch.func.jvp / jacfwd, forward_ad dual tensors) is not supported; "
        "use reverse mode (torch.func.vjp / jacrev / grad)");
}

const at::Tensor& or_undefined(const std::optional<at::Tensor>& t) {
  static const at::Tensor undefined;
  return t.has_value() ? *t : undefined;
}

std::optional<at::Tensor> or_none(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// Nodes are intrusive_ptr-counted in torch 2.13 and shared_ptr-counted in older releases (2.11
// among them); the two helpers spell both, and the branch not taken is never instantiated.
template <typename N, typename... Args>
auto make_node(Args&&... args) {
  if constexpr (std::is_base_of_v<c10::intrusive_ptr_target, N>)
    return c10::make_intrusive<N>(std::forward<Args>(args)...);
  else  // deleteNode (found by argument-dependent lookup) frees long chains without recursion
    return std::shared_ptr<N>(new N(std::forward<Args>(args)...), [](N* node) { deleteNode(node); });
}

template <typename N>
auto pointer_to(N* node) {
  if constexpr (requires { node->getptr(); })
    return node->getptr();
  else
    return node->shared_from_this();
}

// A node type's name(), as the profiler and anomaly mode show it: its Python type's name (kName)
// in our namespace.
std::string qualified(const char* name) { return std::string("lenet_ext::") + name; }

// relu ------------------------------------------------------------------------------------------

using ReluSig = at::Tensor(const at::Tensor&);
using ReluBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&);

const auto& relu_op() {
  static const auto op = handle<ReluSig>("lenet_ext::relu");
  return op;
}

const auto& relu_backward_op() {
  static const auto op = handle<ReluBackwardSig>("lenet_ext::relu_backward");
  return op;
}

struct ReluBackward : torch::autograd::Node {
  static constexpr const char* kName = "ReluBackward";
  SavedVariable result;  // the forward's output, saved as an output

  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined() || !should_compute_output(0)) return {at::Tensor()};
    return {call_backward(relu_backward_op(), grads[0], result.unpack(pointer_to(this)))};
  }
  std::string name() const override { return qualified(kName); }
  void release_variables() override { result.reset_data(); }
};

at::Tensor relu_autograd(const at::Tensor& input) {
  check_no_tangent("lenet_ext.relu", {&input});
  at::Tensor result = call_below_autograd(relu_op(), input);
  if (!wants_grad({&input})) return result;
  auto node = make_node<ReluBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(input));
  torch::autograd::set_history(result, node);
  node->result = SavedVariable(result, /*is_output=*/true);
  return result;
}

// relu_backward(grad_output, result) keeps grad_output where result > 0: linear in grad_output,
// and constant in result but where result crosses 0 (a zero derivative, as for ATen's
// threshold_backward; an undefined gradient is autograd's zero).
struct ReluBackwardBackward : torch::autograd::Node {
  static constexpr const char* kName = "ReluBackwardBackward";
  SavedVariable result;

  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined() || !should_compute_output(0)) return {at::Tensor(), at::Tensor()};
    return {call_backward(relu_backward_op(), grads[0], result.unpack()), at::Tensor()};
  }
  std::string name() const override { return qualified(kName); }
  void release_variables() override { result.reset_data(); }
};

at::Tensor relu_backward_autograd(const at::Tensor& grad_output, const at::Tensor& result) {
  check_no_tangent("lenet_ext.relu_backward", {&grad_output, &result});
  at::Tensor grad_input = call_below_autograd(relu_backward_op(), grad_output, result);
  if (!wants_grad({&grad_output, &result})) return grad_input;
  auto node = make_node<ReluBackwardBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(grad_output, result));
  torch::autograd::set_history(grad_input, node);
  node->result = SavedVariable(result, /*is_output=*/false);
  return grad_input;
}

// linear and conv2d -------------------------------------------------------------------------------

using LinearSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&);
using LinearBackwardSig =
    Grads(const at::Tensor&, const at::Tensor&, const at::Tensor&, std::array<bool, 3>);
using Conv2dSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                             at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t);
using Conv2dBackwardSig = Grads(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t,
                                std::array<bool, 3>);

const auto& linear_op() {
  static const auto op = handle<LinearSig>("lenet_ext::linear");
  return op;
}
const auto& linear_backward_op() {
  static const auto op = handle<LinearBackwardSig>("lenet_ext::linear_backward");
  return op;
}
const auto& conv2d_op() {
  static const auto op = handle<Conv2dSig>("lenet_ext::conv2d");
  return op;
}
const auto& conv2d_backward_op() {
  static const auto op = handle<Conv2dBackwardSig>("lenet_ext::conv2d_backward");
  return op;
}

// A layer: input and weight, an optional bias, and the arguments beyond the tensors, with its
// forward and backward ops called from a node (call_backward). The nodes below serve both.
struct LinearLayer {
  static constexpr const char* kBackward = "LinearBackward";
  static constexpr const char* kBackwardBackward = "LinearBackwardBackward";
  static constexpr int kBiasTrailingDims = 0;  // bias runs along the output's last dimension

  at::Tensor forward(const at::Tensor& input, const at::Tensor& weight,
                     const std::optional<at::Tensor>& bias) const {
    return call_backward(linear_op(), input, weight, bias);
  }
  Grads backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                 std::array<bool, 3> mask) const {
    return call_backward(linear_backward_op(), grad_output, input, weight, mask);
  }
};

struct Conv2dLayer {
  static constexpr const char* kBackward = "Conv2dBackward";
  static constexpr const char* kBackwardBackward = "Conv2dBackwardBackward";
  static constexpr int kBiasTrailingDims = 2;  // bias runs along channels, before H and W
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups;

  at::Tensor forward(const at::Tensor& input, const at::Tensor& weight,
                     const std::optional<at::Tensor>& bias) const {
    return call_backward(conv2d_op(), input, weight, bias, stride, padding, dilation, groups);
  }
  Grads backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                 std::array<bool, 3> mask) const {
    return call_backward(conv2d_backward_op(), grad_output, input, weight, stride, padding,
                         dilation, groups, mask);
  }
};

// The forward op's node: saves input and weight, asks the backward op for the wanted gradients of
// (input, weight, bias) (an absent bias has no edge).
template <typename Layer>
struct LayerBackward : torch::autograd::Node {
  static constexpr const char* kName = Layer::kBackward;
  explicit LayerBackward(Layer layer) : layer(std::move(layer)) {}
  Layer layer;
  SavedVariable input, weight;

  variable_list apply(variable_list&& grads) override {
    const std::array<bool, 3> mask = {should_compute_output(0), should_compute_output(1),
                                      should_compute_output(2)};
    if (!grads[0].defined() || !(mask[0] || mask[1] || mask[2]))
      return {at::Tensor(), at::Tensor(), at::Tensor()};
    auto [grad_input, grad_weight, grad_bias] =
        layer.backward(grads[0], input.unpack(), weight.unpack(), mask);
    return {grad_input, grad_weight, grad_bias};
  }
  std::string name() const override { return qualified(kName); }
  void release_variables() override {
    input.reset_data();
    weight.reset_data();
  }
};

// Records the forward's node, once wants_grad said yes.
template <typename Layer>
at::Tensor layer_autograd(const Layer& layer, const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, at::Tensor output) {
  auto node = make_node<LayerBackward<Layer>>(layer);
  node->set_next_edges(torch::autograd::collect_next_edges(input, weight, or_undefined(bias)));
  torch::autograd::set_history(output, node);
  node->input = SavedVariable(input, /*is_output=*/false);
  node->weight = SavedVariable(weight, /*is_output=*/false);
  return output;
}

// The backward op's node. Its results are bilinear: grad_input pairs grad_output with weight,
// grad_weight pairs it with input, grad_bias sums it. With gg_input, gg_weight, gg_bias the
// gradients arriving for them:
//   grad of grad_output = layer(gg_input, weight, gg_bias) + layer(input, gg_weight)
//   grad of input       = backward(grad_output, input, gg_weight).grad_input
//   grad of weight      = backward(grad_output, gg_input, weight).grad_weight
// each computed only where wanted and through the ops' own autograd, so differentiable again.
template <typename Layer>
struct LayerBackwardBackward : torch::autograd::Node {
  static constexpr const char* kName = Layer::kBackwardBackward;
  explicit LayerBackwardBackward(Layer layer) : layer(std::move(layer)) {}
  Layer layer;
  SavedVariable grad_output, input, weight;

  variable_list apply(variable_list&& grads) override {
    const at::Tensor &gg_input = grads[0], &gg_weight = grads[1], &gg_bias = grads[2];
    at::Tensor grad_grad_output, grad_input, grad_weight;
    const at::Tensor grad = grad_output.unpack();
    if (should_compute_output(0)) {
      if (gg_input.defined())
        grad_grad_output = layer.forward(gg_input, weight.unpack(), or_none(gg_bias));
      if (gg_weight.defined()) {
        const at::Tensor term = layer.forward(
            input.unpack(), gg_weight, gg_input.defined() ? std::nullopt : or_none(gg_bias));
        grad_grad_output = grad_grad_output.defined() ? at::add(grad_grad_output, term) : term;
      }
      if (!grad_grad_output.defined() && gg_bias.defined()) {  // the bias alone: broadcast
        std::vector<int64_t> shape(1 + Layer::kBiasTrailingDims, 1);
        shape[0] = gg_bias.size(0);
        grad_grad_output = gg_bias.reshape(shape).expand(grad.sizes());
      }
    }
    if (should_compute_output(1) && gg_weight.defined())
      grad_input =
          std::get<0>(layer.backward(grad, input.unpack(), gg_weight, {true, false, false}));
    if (should_compute_output(2) && gg_input.defined())
      grad_weight =
          std::get<1>(layer.backward(grad, gg_input, weight.unpack(), {false, true, false}));
    return {grad_grad_output, grad_input, grad_weight};
  }
  std::string name() const override { return qualified(kName); }
  void release_variables() override {
    grad_output.reset_data();
    input.reset_data();
    weight.reset_data();
  }
};

template <typename Layer>
Grads layer_backward_autograd(const Layer& layer, const at::Tensor& grad_output,
                              const at::Tensor& input, const at::Tensor& weight, Grads grads) {
  if (!wants_grad({&grad_output, &input, &weight})) return grads;
  auto node = make_node<LayerBackwardBackward<Layer>>(layer);
  node->set_next_edges(torch::autograd::collect_next_edges(grad_output, input, weight));
  // an output output_mask left out is undefined: it takes its slot, with no gradient
  torch::autograd::set_history({std::get<0>(grads), std::get<1>(grads), std::get<2>(grads)}, node);
  node->grad_output = SavedVariable(grad_output, /*is_output=*/false);
  node->input = SavedVariable(input, /*is_output=*/false);
  node->weight = SavedVariable(weight, /*is_output=*/false);
  return grads;
}

at::Tensor linear_autograd(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias) {
  check_no_tangent("lenet_ext.linear", {&input, &weight, &or_undefined(bias)});
  at::Tensor output = call_below_autograd(linear_op(), input, weight, bias);
  if (!wants_grad({&input, &weight, &or_undefined(bias)})) return output;
  return layer_autograd(LinearLayer{}, input, weight, bias, std::move(output));
}

Grads linear_backward_autograd(const at::Tensor& grad_output, const at::Tensor& input,
                               const at::Tensor& weight, std::array<bool, 3> output_mask) {
  check_no_tangent("lenet_ext.linear_backward", {&grad_output, &input, &weight});
  return layer_backward_autograd(
      LinearLayer{}, grad_output, input, weight,
      call_below_autograd(linear_backward_op(), grad_output, input, weight, output_mask));
}

at::Tensor conv2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_no_tangent("lenet_ext.conv2d", {&input, &weight, &or_undefined(bias)});
  at::Tensor output =
      call_below_autograd(conv2d_op(), input, weight, bias, stride, padding, dilation, groups);
  if (!wants_grad({&input, &weight, &or_undefined(bias)})) return output;
  return layer_autograd(Conv2dLayer{stride.vec(), padding.vec(), dilation.vec(), groups}, input,
                        weight, bias, std::move(output));
}

Grads conv2d_backward_autograd(const at::Tensor& grad_output, const at::Tensor& input,
                               const at::Tensor& weight, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                               std::array<bool, 3> output_mask) {
  check_no_tangent("lenet_ext.conv2d_backward", {&grad_output, &input, &weight});
  Grads grads = call_below_autograd(conv2d_backward_op(), grad_output, input, weight, stride,
                                    padding, dilation, groups, output_mask);
  if (!wants_grad({&grad_output, &input, &weight})) return grads;
  return layer_backward_autograd(Conv2dLayer{stride.vec(), padding.vec(), dilation.vec(), groups},
                                 grad_output, input, weight, std::move(grads));
}

// max_pool2d ------------------------------------------------------------------------------------

using MaxPool2dSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::IntArrayRef,
                                                        at::IntArrayRef, at::IntArrayRef,
                                                        at::IntArrayRef, bool);
using MaxPool2dBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef);
using MaxPool2dGatherSig = at::Tensor(const at::Tensor&, const at::Tensor&);

const auto& max_pool2d_op() {
  static const auto op = handle<MaxPool2dSig>("lenet_ext::max_pool2d");
  return op;
}
const auto& max_pool2d_backward_op() {
  static const auto op = handle<MaxPool2dBackwardSig>("lenet_ext::max_pool2d_backward");
  return op;
}
const auto& max_pool2d_gather_op() {
  static const auto op = handle<MaxPool2dGatherSig>("lenet_ext::max_pool2d_gather");
  return op;
}

// The node has one input, the output's gradient: the indices (int64) have no gradient. It adds
// each gradient at its argmax: max_pool2d's backward, and max_pool2d_gather's (their adjoint);
// Name gives each its own type, so each prints its own name.
template <typename Name>
struct ScatterToArgmax : torch::autograd::Node {
  static constexpr const char* kName = Name::kName;
  SavedVariable indices;
  std::vector<int64_t> input_size;

  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined() || !should_compute_output(0)) return {at::Tensor()};
    return {call_backward(max_pool2d_backward_op(), grads[0], indices.unpack(), input_size)};
  }
  std::string name() const override { return qualified(kName); }
  void release_variables() override { indices.reset_data(); }
};

struct MaxPool2dName { static constexpr const char* kName = "MaxPool2dBackward"; };
struct MaxPool2dGatherName { static constexpr const char* kName = "MaxPool2dGatherBackward"; };
using MaxPool2dBackward = ScatterToArgmax<MaxPool2dName>;
using MaxPool2dGatherBackward = ScatterToArgmax<MaxPool2dGatherName>;

std::tuple<at::Tensor, at::Tensor> max_pool2d_autograd(const at::Tensor& input,
                                                       at::IntArrayRef kernel_size,
                                                       at::IntArrayRef stride,
                                                       at::IntArrayRef padding,
                                                       at::IntArrayRef dilation, bool ceil_mode) {
  check_no_tangent("lenet_ext.max_pool2d", {&input});
  auto [output, indices] = call_below_autograd(max_pool2d_op(), input, kernel_size, stride,
                                               padding, dilation, ceil_mode);
  if (!wants_grad({&input})) return {output, indices};
  auto node = make_node<MaxPool2dBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(input));
  torch::autograd::set_history(output, node);
  node->indices = SavedVariable(indices, /*is_output=*/false);
  node->input_size = input.sizes().vec();
  return {output, indices};
}

// max_pool2d_backward adds each gradient at its window's argmax and max_pool2d_gather reads each
// argmax back: both linear in their tensor, each the other's adjoint, so each one's derivative is
// the other at the same indices.
struct MaxPool2dBackwardBackward : torch::autograd::Node {
  static constexpr const char* kName = "MaxPool2dBackwardBackward";
  SavedVariable indices;

  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined() || !should_compute_output(0)) return {at::Tensor()};
    return {call_backward(max_pool2d_gather_op(), grads[0], indices.unpack())};
  }
  std::string name() const override { return qualified(kName); }
  void release_variables() override { indices.reset_data(); }
};

at::Tensor max_pool2d_backward_autograd(const at::Tensor& grad_output, const at::Tensor& indices,
                                        at::IntArrayRef input_size) {
  check_no_tangent("lenet_ext.max_pool2d_backward", {&grad_output});
  at::Tensor grad_input =
      call_below_autograd(max_pool2d_backward_op(), grad_output, indices, input_size);
  if (!wants_grad({&grad_output})) return grad_input;
  auto node = make_node<MaxPool2dBackwardBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(grad_output));
  torch::autograd::set_history(grad_input, node);
  node->indices = SavedVariable(indices, /*is_output=*/false);
  return grad_input;
}

at::Tensor max_pool2d_gather_autograd(const at::Tensor& input, const at::Tensor& indices) {
  check_no_tangent("lenet_ext.max_pool2d_gather", {&input});
  at::Tensor output = call_below_autograd(max_pool2d_gather_op(), input, indices);
  if (!wants_grad({&input})) return output;
  auto node = make_node<MaxPool2dGatherBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(input));
  torch::autograd::set_history(output, node);
  node->indices = SavedVariable(indices, /*is_output=*/false);
  node->input_size = input.sizes().vec();
  return output;
}

// fused: conv2d_relu_max_pool2d and lenet ---------------------------------------------------------

// The fused ops' node: the tensors the backward needs, handed with the wanted mask (one entry a
// forward input, an edge each) to Fused::backward. A tensor the forward returned with this node
// as its grad_fn is saved as an output.
template <typename Fused>
struct FusedBackward : torch::autograd::Node {
  static constexpr const char* kName = Fused::kName;
  std::vector<SavedVariable> saved;

  variable_list apply(variable_list&& grads) override {
    std::vector<bool> mask(num_outputs());
    bool any = false;
    for (size_t i = 0; i < mask.size(); ++i) any |= mask[i] = should_compute_output(i);
    if (!grads[0].defined() || !any) return variable_list(mask.size());
    std::vector<at::Tensor> tensors;
    for (auto& s : saved) tensors.push_back(s.unpack(pointer_to(this)));
    return Fused::backward(grads[0], tensors, mask);
  }
  std::string name() const override { return qualified(kName); }
  void release_variables() override {
    for (auto& s : saved) s.reset_data();
  }
};

// Records `output`'s node: an edge to each of `inputs`, and `saved` saved (output itself among
// them is saved as an output). The other results of the forward get no gradient.
template <typename Fused>
void record_fused_node(const at::Tensor& output, const variable_list& inputs,
                       const variable_list& saved) {
  auto node = make_node<FusedBackward<Fused>>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  torch::autograd::set_history(output, node);
  for (const at::Tensor& t : saved) node->saved.emplace_back(t, /*is_output=*/t.is_same(output));
}

using BlockSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&);
using BlockBackwardSig = Grads(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const at::Tensor&, const at::Tensor&, std::array<bool, 3>);

const auto& block_op() {
  static const auto op = handle<BlockSig>("lenet_ext::conv2d_relu_max_pool2d");
  return op;
}

// A recorded backward (create_graph=True) of the fused ops runs the unfused ops, whose nodes make
// it differentiable, in place of a double backward of the fused kernels: simpler, and the fused
// backward stays what first-order training runs. conv2d_relu_max_pool2d's gradient that way:
// relu's mask at each window's argmax is output > 0 (there the ReLU's result is the output), then
// the pool's scatter to the convolution's output, then conv2d's backward.
Grads block_backward_unfused(const at::Tensor& grad, const at::Tensor& output,
                             const at::Tensor& indices, const at::Tensor& input,
                             const at::Tensor& weight, std::array<bool, 3> mask) {
  const at::Tensor grad_relu = call_backward(relu_backward_op(), grad, output);
  const std::vector<int64_t> conv_size = {input.size(0), weight.size(0),
                                          input.size(2) - weight.size(2) + 1,
                                          input.size(3) - weight.size(3) + 1};
  const at::Tensor grad_conv =
      call_backward(max_pool2d_backward_op(), grad_relu, indices, conv_size);
  return call_backward(conv2d_backward_op(), grad_conv, input, weight, std::vector<int64_t>{1, 1},
                       std::vector<int64_t>{0, 0}, std::vector<int64_t>{1, 1}, int64_t{1}, mask);
}

struct Block {
  static constexpr const char* kName = "Conv2dReluMaxPool2dBackward";

  // saved: output, indices, input, weight
  static variable_list backward(const at::Tensor& grad, const std::vector<at::Tensor>& s,
                                const std::vector<bool>& mask) {
    static const auto op =
        handle<BlockBackwardSig>("lenet_ext::conv2d_relu_max_pool2d_backward");
    const std::array<bool, 3> wanted = {mask[0], mask[1], mask[2]};
    auto [grad_input, grad_weight, grad_bias] =
        at::GradMode::is_enabled()
            ? block_backward_unfused(grad, s[0], s[1], s[2], s[3], wanted)
            : call_below_autograd(op, grad, s[0], s[1], s[2], s[3], wanted);
    return {grad_input, grad_weight, grad_bias};
  }
};

std::tuple<at::Tensor, at::Tensor> conv2d_relu_max_pool2d_autograd(const at::Tensor& input,
                                                                   const at::Tensor& weight,
                                                                   const at::Tensor& bias) {
  check_no_tangent("lenet_ext.conv2d_relu_max_pool2d", {&input, &weight, &bias});
  auto [output, indices] = call_below_autograd(block_op(), input, weight, bias);
  if (!wants_grad({&input, &weight, &bias})) return {output, indices};
  record_fused_node<Block>(output, {input, weight, bias}, {output, indices, input, weight});
  return {output, indices};
}

using T = const at::Tensor&;
using LenetOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                at::Tensor, at::Tensor>;
using LenetSig = LenetOutputs(T, T, T, T, T, T, T, T, T, T, T);
using LenetBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                    at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                    at::Tensor>(T, T, T, T, T, T, T, T, T, T, T, T, T,
                                                std::array<bool, 11>);

const auto& lenet_op() {
  static const auto op = handle<LenetSig>("lenet_ext::lenet");
  return op;
}

struct Lenet {
  static constexpr const char* kName = "LenetBackward";

  // saved: input, the five weights, the six activations the forward returns after the logits,
  // then the biases of conv1, conv2, fc1 and fc2 (for unfused())
  static variable_list backward(const at::Tensor& grad, const std::vector<at::Tensor>& s,
                                const std::vector<bool>& mask) {
    static const auto op = handle<LenetBackwardSig>("lenet_ext::lenet_backward");
    if (at::GradMode::is_enabled()) return unfused(grad, s, mask);
    std::array<bool, 11> wanted;
    std::copy(mask.begin(), mask.end(), wanted.begin());
    return std::apply([](auto&&... t) { return variable_list{t...}; },
                      call_below_autograd(op, grad, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
                                          s[8], s[9], s[10], s[11], wanted));
  }

  // The recorded backward (see block_backward_unfused): the activations again, through the ops'
  // autograd this time (the saved ones hold no graph back to the parameters), then the chain of
  // backward ops from the logits down to the first wanted gradient.
  static variable_list unfused(const at::Tensor& grad, const std::vector<at::Tensor>& s,
                               const std::vector<bool>& mask) {
    const at::Tensor &input = s[0], &conv1_weight = s[1], &conv2_weight = s[2],
                     &fc1_weight = s[3], &fc2_weight = s[4], &fc3_weight = s[5];
    const at::Tensor &conv1_bias = s[12], &conv2_bias = s[13], &fc1_bias = s[14],
                     &fc2_bias = s[15];
    const auto [pool1, pool1_indices] = call_backward(block_op(), input, conv1_weight, conv1_bias);
    const auto [pool2, pool2_indices] = call_backward(block_op(), pool1, conv2_weight, conv2_bias);
    const at::Tensor flat = pool2.reshape({pool2.size(0), -1});
    const at::Tensor fc1 =
        call_backward(relu_op(), call_backward(linear_op(), flat, fc1_weight, fc1_bias));
    const at::Tensor fc2 =
        call_backward(relu_op(), call_backward(linear_op(), fc1, fc2_weight, fc2_bias));
    // whether a gradient below parameter `end` (in the op's input order) is wanted
    auto below = [&](int end) {
      return std::any_of(mask.begin(), mask.begin() + end, [](bool wanted) { return wanted; });
    };
    variable_list grads(11);
    auto [grad_fc2, grad_fc3_weight, grad_fc3_bias] =
        call_backward(linear_backward_op(), grad, fc2, fc3_weight,
                      std::array<bool, 3>{below(9), mask[9], mask[10]});
    grads[9] = grad_fc3_weight, grads[10] = grad_fc3_bias;
    if (!below(9)) return grads;
    auto [grad_fc1, grad_fc2_weight, grad_fc2_bias] = call_backward(
        linear_backward_op(), call_backward(relu_backward_op(), grad_fc2, fc2), fc1, fc2_weight,
        std::array<bool, 3>{below(7), mask[7], mask[8]});
    grads[7] = grad_fc2_weight, grads[8] = grad_fc2_bias;
    if (!below(7)) return grads;
    auto [grad_flat, grad_fc1_weight, grad_fc1_bias] = call_backward(
        linear_backward_op(), call_backward(relu_backward_op(), grad_fc1, fc1), flat, fc1_weight,
        std::array<bool, 3>{below(5), mask[5], mask[6]});
    grads[5] = grad_fc1_weight, grads[6] = grad_fc1_bias;
    if (!below(5)) return grads;
    auto [grad_pool1, grad_conv2_weight, grad_conv2_bias] = block_backward_unfused(
        grad_flat.reshape(pool2.sizes()), pool2, pool2_indices, pool1, conv2_weight,
        {below(3), mask[3], mask[4]});
    grads[3] = grad_conv2_weight, grads[4] = grad_conv2_bias;
    if (!below(3)) return grads;
    std::tie(grads[0], grads[1], grads[2]) = block_backward_unfused(
        grad_pool1, pool1, pool1_indices, input, conv1_weight, {mask[0], mask[1], mask[2]});
    return grads;
  }
};

LenetOutputs lenet_autograd(T input, T conv1_weight, T conv1_bias, T conv2_weight, T conv2_bias,
                            T fc1_weight, T fc1_bias, T fc2_weight, T fc2_bias, T fc3_weight,
                            T fc3_bias) {
  const variable_list inputs = {input, conv1_weight, conv1_bias, conv2_weight, conv2_bias,
                                fc1_weight, fc1_bias, fc2_weight, fc2_bias, fc3_weight, fc3_bias};
  check_no_tangent("lenet_ext.lenet", {&inputs[0], &inputs[1], &inputs[2], &inputs[3], &inputs[4],
                                       &inputs[5], &inputs[6], &inputs[7], &inputs[8], &inputs[9],
                                       &inputs[10]});
  auto outputs = call_below_autograd(lenet_op(), input, conv1_weight, conv1_bias, conv2_weight,
                                     conv2_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                     fc3_weight, fc3_bias);
  if (!wants_grad({&inputs[0], &inputs[1], &inputs[2], &inputs[3], &inputs[4], &inputs[5],
                   &inputs[6], &inputs[7], &inputs[8], &inputs[9], &inputs[10]}))
    return outputs;
  const auto& [logits, pool1, pool1_indices, pool2, pool2_indices, fc1_relu, fc2_relu] = outputs;
  record_fused_node<Lenet>(logits, inputs,
                           {input, conv1_weight, conv2_weight, fc1_weight, fc2_weight, fc3_weight,
                            pool1, pool1_indices, pool2, pool2_indices, fc1_relu, fc2_relu,
                            conv1_bias, conv2_bias, fc1_bias, fc2_bias});
  return outputs;
}

template <typename N>
std::pair<const std::type_info*, const char*> node_type() {
  return {&typeid(N), N::kName};
}

}  // namespace

std::vector<std::pair<const std::type_info*, const char*>> autograd_node_types() {
  return {node_type<ReluBackward>(),
          node_type<ReluBackwardBackward>(),
          node_type<LayerBackward<LinearLayer>>(),
          node_type<LayerBackwardBackward<LinearLayer>>(),
          node_type<LayerBackward<Conv2dLayer>>(),
          node_type<LayerBackwardBackward<Conv2dLayer>>(),
          node_type<MaxPool2dBackward>(),
          node_type<MaxPool2dBackwardBackward>(),
          node_type<MaxPool2dGatherBackward>(),
          node_type<FusedBackward<Block>>(),
          node_type<FusedBackward<Lenet>>()};
}

TORCH_LIBRARY_IMPL(lenet_ext, Autograd, m) {
  m.impl("relu", &relu_autograd);
  m.impl("relu_backward", &relu_backward_autograd);
  m.impl("linear", &linear_autograd);
  m.impl("linear_backward", &linear_backward_autograd);
  m.impl("conv2d", &conv2d_autograd);
  m.impl("conv2d_backward", &conv2d_backward_autograd);
  m.impl("max_pool2d", &max_pool2d_autograd);
  m.impl("max_pool2d_backward", &max_pool2d_backward_autograd);
  m.impl("max_pool2d_gather", &max_pool2d_gather_autograd);
  m.impl("conv2d_relu_max_pool2d", &conv2d_relu_max_pool2d_autograd);
  m.impl("lenet", &lenet_autograd);
}

}  // namespace lenet_ext
