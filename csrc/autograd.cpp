// Autograd of the forward ops, in C++, registered at the Autograd key for every device. Each
// saves what its backward op needs and asks that op only for the gradients autograd wants
// (output_mask); a call without grad goes straight to the kernel (Python's
// torch.library.register_autograd costs several times a batch-1 kernel per call).
// One style for every op: a hand-written autograd Node, as ATen's generated ops record, not a
// torch::autograd::Function, whose bookkeeping (CppNode, its mutex, output wrapping, saved-variable
// lists) costs more per forward+backward than the batch-1 kernels (docs/performance.md, autograd).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <vector>
#include <tuple>
#include <type_traits>

namespace lenet_ext {
namespace {

using torch::autograd::variable_list;

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

// A backward op called from a node. Through the Autograd key only while the backward itself is
// recorded (create_graph=True): there the backward ops' Autograd kernel records a node that
// raises "not implemented" for a second derivative. Otherwise that kernel, a boxed fallback, only
// redispatches, which costs a little every call.
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

// relu ------------------------------------------------------------------------------------------

using ReluSig = at::Tensor(const at::Tensor&);
using ReluBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&);

const auto& relu_op() {
  static const auto op = handle<ReluSig>("lenet_ext::relu");
  return op;
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

struct ReluBackward : torch::autograd::Node {
  torch::autograd::SavedVariable result;  // the forward's output, saved as an output

  variable_list apply(variable_list&& grads) override {
    static const auto op = handle<ReluBackwardSig>("lenet_ext::relu_backward");
    if (!grads[0].defined() || !should_compute_output(0)) return {at::Tensor()};
    return {call_backward(op, grads[0], result.unpack(pointer_to(this)))};
  }
  std::string name() const override { return "lenet_ext::ReluBackward"; }
  void release_variables() override { result.reset_data(); }
};

at::Tensor relu_autograd(const at::Tensor& input) {
  check_no_tangent("lenet_ext.relu", {&input});
  at::Tensor result = call_below_autograd(relu_op(), input);
  if (!wants_grad({&input})) return result;
  auto node = make_node<ReluBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(input));
  torch::autograd::set_history(result, node);
  node->result = torch::autograd::SavedVariable(result, /*is_output=*/true);
  return result;
}

// linear's and conv2d's node: saves input and weight, and hands them with the wanted mask of
// (input, weight, bias) to `backward`, which calls the backward op with the layer's other arguments.
template <typename Backward>
struct InputWeightBackward : torch::autograd::Node {
  InputWeightBackward(const char* name, Backward backward)
      : name_(name), backward_(std::move(backward)) {}
  torch::autograd::SavedVariable input, weight;

  variable_list apply(variable_list&& grads) override {
    const std::array<bool, 3> mask = {should_compute_output(0), should_compute_output(1),
                                      should_compute_output(2)};  // an absent bias has no edge
    if (!grads[0].defined() || !(mask[0] || mask[1] || mask[2]))
      return {at::Tensor(), at::Tensor(), at::Tensor()};
    auto [grad_input, grad_weight, grad_bias] =
        backward_(grads[0], input.unpack(), weight.unpack(), mask);
    return {grad_input, grad_weight, grad_bias};
  }
  std::string name() const override { return name_; }
  void release_variables() override {
    input.reset_data();
    weight.reset_data();
  }

 private:
  const char* name_;
  Backward backward_;
};

// Records `output`'s node: edges to input, weight and bias (or none), input and weight saved.
template <typename Backward>
void record_input_weight_node(const at::Tensor& output, const at::Tensor& input,
                              const at::Tensor& weight, const at::Tensor& bias, const char* name,
                              Backward backward) {
  auto node = make_node<InputWeightBackward<Backward>>(name, std::move(backward));
  node->set_next_edges(torch::autograd::collect_next_edges(input, weight, bias));
  torch::autograd::set_history(output, node);
  node->input = torch::autograd::SavedVariable(input, /*is_output=*/false);
  node->weight = torch::autograd::SavedVariable(weight, /*is_output=*/false);
}

// linear ----------------------------------------------------------------------------------------

using LinearSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&);
using LinearBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, std::array<bool, 3>);

const auto& linear_op() {
  static const auto op = handle<LinearSig>("lenet_ext::linear");
  return op;
}

at::Tensor linear_autograd(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias) {
  check_no_tangent("lenet_ext.linear", {&input, &weight, &or_undefined(bias)});
  at::Tensor output = call_below_autograd(linear_op(), input, weight, bias);
  if (!wants_grad({&input, &weight, &or_undefined(bias)})) return output;
  record_input_weight_node(output, input, weight, or_undefined(bias), "lenet_ext::LinearBackward",
                           [](const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
                              std::array<bool, 3> mask) {
                             static const auto op =
                                 handle<LinearBackwardSig>("lenet_ext::linear_backward");
                             return call_backward(op, grad, x, w, mask);
                           });
  return output;
}

// conv2d ----------------------------------------------------------------------------------------

using Conv2dSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                             at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t);
using Conv2dBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
    at::IntArrayRef, int64_t, std::array<bool, 3>);

const auto& conv2d_op() {
  static const auto op = handle<Conv2dSig>("lenet_ext::conv2d");
  return op;
}

at::Tensor conv2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_no_tangent("lenet_ext.conv2d", {&input, &weight, &or_undefined(bias)});
  at::Tensor output =
      call_below_autograd(conv2d_op(), input, weight, bias, stride, padding, dilation, groups);
  if (!wants_grad({&input, &weight, &or_undefined(bias)})) return output;
  record_input_weight_node(
      output, input, weight, or_undefined(bias), "lenet_ext::Conv2dBackward",
      [stride = stride.vec(), padding = padding.vec(), dilation = dilation.vec(), groups](
          const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
          std::array<bool, 3> mask) {
        static const auto op = handle<Conv2dBackwardSig>("lenet_ext::conv2d_backward");
        return call_backward(op, grad, x, w, stride, padding, dilation, groups, mask);
      });
  return output;
}

// max_pool2d ------------------------------------------------------------------------------------

using MaxPool2dSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::IntArrayRef,
                                                        at::IntArrayRef, at::IntArrayRef,
                                                        at::IntArrayRef, bool);
using MaxPool2dBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef);

const auto& max_pool2d_op() {
  static const auto op = handle<MaxPool2dSig>("lenet_ext::max_pool2d");
  return op;
}

// The node has one input, the output's gradient: the indices (int64) have no gradient.
struct MaxPool2dBackward : torch::autograd::Node {
  torch::autograd::SavedVariable indices;
  std::vector<int64_t> input_size;

  variable_list apply(variable_list&& grads) override {
    static const auto op = handle<MaxPool2dBackwardSig>("lenet_ext::max_pool2d_backward");
    if (!grads[0].defined() || !should_compute_output(0)) return {at::Tensor()};
    return {call_backward(op, grads[0], indices.unpack(), input_size)};
  }
  std::string name() const override { return "lenet_ext::MaxPool2dBackward"; }
  void release_variables() override { indices.reset_data(); }
};

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
  node->indices = torch::autograd::SavedVariable(indices, /*is_output=*/false);
  node->input_size = input.sizes().vec();
  return {output, indices};
}

// fused: conv2d_relu_max_pool2d and lenet ---------------------------------------------------------

// The fused ops' node: the tensors the backward op needs, handed with the wanted mask (one entry a
// forward input, an edge each) to `backward`, which calls the backward op. A tensor the forward
// returned with this node as its grad_fn is saved as an output.
template <typename Backward>
struct SavedBackward : torch::autograd::Node {
  SavedBackward(const char* name, Backward backward) : name_(name), backward_(std::move(backward)) {}
  std::vector<torch::autograd::SavedVariable> saved;

  variable_list apply(variable_list&& grads) override {
    std::vector<bool> mask(num_outputs());
    bool any = false;
    for (size_t i = 0; i < mask.size(); ++i) any |= mask[i] = should_compute_output(i);
    if (!grads[0].defined() || !any) return variable_list(mask.size());
    std::vector<at::Tensor> tensors;
    for (auto& s : saved) tensors.push_back(s.unpack(pointer_to(this)));
    return backward_(grads[0], tensors, mask);
  }
  std::string name() const override { return name_; }
  void release_variables() override {
    for (auto& s : saved) s.reset_data();
  }

 private:
  const char* name_;
  Backward backward_;
};

// Records `output`'s node: an edge to each of `inputs`, and `saved` saved (output itself among
// them is saved as an output). The other results of the forward get no gradient.
template <typename Backward>
void record_saved_node(const at::Tensor& output, const variable_list& inputs,
                       const variable_list& saved, const char* name, Backward backward) {
  auto node = make_node<SavedBackward<Backward>>(name, std::move(backward));
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  torch::autograd::set_history(output, node);
  for (const at::Tensor& t : saved)
    node->saved.emplace_back(t, /*is_output=*/t.is_same(output));
}

using BlockSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&);
using BlockBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    std::array<bool, 3>);

const auto& block_op() {
  static const auto op = handle<BlockSig>("lenet_ext::conv2d_relu_max_pool2d");
  return op;
}

std::tuple<at::Tensor, at::Tensor> conv2d_relu_max_pool2d_autograd(const at::Tensor& input,
                                                                   const at::Tensor& weight,
                                                                   const at::Tensor& bias) {
  check_no_tangent("lenet_ext.conv2d_relu_max_pool2d", {&input, &weight, &bias});
  auto [output, indices] = call_below_autograd(block_op(), input, weight, bias);
  if (!wants_grad({&input, &weight, &bias})) return {output, indices};
  record_saved_node(output, {input, weight, bias}, {output, indices, input, weight},
                    "lenet_ext::Conv2dReluMaxPool2dBackward",
                    [](const at::Tensor& grad, const std::vector<at::Tensor>& s,
                       const std::vector<bool>& mask) {
                      static const auto op = handle<BlockBackwardSig>(
                          "lenet_ext::conv2d_relu_max_pool2d_backward");
                      auto [grad_input, grad_weight, grad_bias] = call_backward(
                          op, grad, s[0], s[1], s[2], s[3], std::array<bool, 3>{mask[0], mask[1], mask[2]});
                      return variable_list{grad_input, grad_weight, grad_bias};
                    });
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

// Saves the input, the five weights and the six activations the forward returns after the logits
// (only the logits have a gradient).
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
  record_saved_node(logits, inputs,
                    {input, conv1_weight, conv2_weight, fc1_weight, fc2_weight, fc3_weight, pool1,
                     pool1_indices, pool2, pool2_indices, fc1_relu, fc2_relu},
                    "lenet_ext::LenetBackward",
                    [](const at::Tensor& grad, const std::vector<at::Tensor>& s,
                       const std::vector<bool>& mask) {
                      static const auto op = handle<LenetBackwardSig>("lenet_ext::lenet_backward");
                      std::array<bool, 11> wanted;
                      std::copy(mask.begin(), mask.end(), wanted.begin());
                      return std::apply([](auto&&... t) { return variable_list{t...}; },
                                        call_backward(op, grad, s[0], s[1], s[2], s[3], s[4], s[5],
                                                      s[6], s[7], s[8], s[9], s[10], s[11], wanted));
                    });
  return outputs;
}

}  // namespace

TORCH_LIBRARY_IMPL(lenet_ext, Autograd, m) {
  m.impl("relu", &relu_autograd);
  m.impl("linear", &linear_autograd);
  m.impl("conv2d", &conv2d_autograd);
  m.impl("max_pool2d", &max_pool2d_autograd);
  m.impl("conv2d_relu_max_pool2d", &conv2d_relu_max_pool2d_autograd);
  m.impl("lenet", &lenet_autograd);
}

}  // namespace lenet_ext
