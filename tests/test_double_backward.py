"""Double backward: a gradient taken with create_graph=True is differentiable again, for every op.
The backward ops have autograd of their own (their gradients are our ops again, so third order
works too), max_pool2d_backward's derivative is the max_pool2d_gather op, and the fused ops'
recorded backward runs the unfused ops. Checked by float64 gradgradcheck, against stock PyTorch's
second-order gradients, and by training with a gradient penalty."""
import pytest
import torch
import torch.nn.functional as TF

import lenet_ext
from lenet_ext import functional as F

lib = torch.ops.lenet_ext

# (input shape, weight shape, stride, padding, dilation, groups)
CONV = [((2, 3, 7, 6), (4, 3, 3, 3), 1, 0, 1, 1),
        ((1, 2, 8, 7), (3, 2, 3, 2), 2, 1, 1, 1),
        ((2, 2, 9, 9), (2, 2, 3, 3), 1, 2, 2, 1),
        ((1, 4, 7, 8), (6, 2, 2, 3), (2, 1), (1, 0), (1, 2), 2)]
# (input shape, kernel_size, stride, padding, dilation, ceil_mode)
POOL = [((2, 3, 6, 6), 2, 2, 0, 1, False),
        ((1, 2, 7, 8), 3, 2, 1, 1, True),
        ((2, 7, 7), (3, 2), 1, (1, 0), 1, False),
        ((1, 2, 9, 9), 2, 2, 1, 2, True)]
# (input shape, out_features)
LINEAR = [((3, 5), 4), ((2, 3, 5), 4), ((5,), 3)]


def rand(*shape, device="cpu", requires_grad=True):
    return torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=requires_grad)


def conv_args(config, bias, device):
    input_shape, weight_shape, stride, padding, dilation, groups = config
    tensors = [rand(*input_shape, device=device), rand(*weight_shape, device=device)]
    if bias:
        tensors.append(rand(weight_shape[0], device=device))
    return tensors, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv_fn(functional, options):
    def fn(x, w, b=None):
        return functional.conv2d(x, w, b, **options)
    return fn


def linear_fn(functional):
    def fn(x, w, b=None):
        return functional.linear(x, w, b)
    return fn


def pool_fn(functional, config):
    _, kernel_size, stride, padding, dilation, ceil_mode = config

    def fn(x):
        return functional.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    return fn


# gradgradcheck -----------------------------------------------------------------------------------

def test_relu_gradgradcheck(device):
    assert torch.autograd.gradgradcheck(F.relu, [rand(2, 3, 4, 5, device=device)])


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("config", LINEAR, ids=str)
def test_linear_gradgradcheck(config, bias, device):
    input_shape, out_features = config
    tensors = [rand(*input_shape, device=device), rand(out_features, input_shape[-1], device=device)]
    if bias:
        tensors.append(rand(out_features, device=device))
    assert torch.autograd.gradgradcheck(linear_fn(F), tensors)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("config", CONV, ids=str)
def test_conv2d_gradgradcheck(config, bias, device):
    tensors, options = conv_args(config, bias, device)
    assert torch.autograd.gradgradcheck(conv_fn(F, options), tensors)


@pytest.mark.parametrize("config", POOL, ids=str)
def test_max_pool2d_gradgradcheck(config, device):
    assert torch.autograd.gradgradcheck(pool_fn(F, config), [rand(*config[0], device=device)])


def test_conv2d_relu_max_pool2d_gradgradcheck():
    def block(x, w, b):
        return lib.conv2d_relu_max_pool2d(x, w, b)[0]
    assert torch.autograd.gradgradcheck(block, [rand(2, 2, 9, 8), rand(3, 2, 3, 3), rand(3)])


def test_lenet_gradgradcheck():
    # all 236 biases and the input's gradient path; the weights (61,470 numbers, too many for
    # finite differences) are checked against stock below
    net = lenet_ext.models.FusedLeNet().double()
    params = dict(net.named_parameters())
    weights = [params[f"{layer}.weight"].detach() for layer in ("conv1", "conv2", "fc1", "fc2", "fc3")]
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)

    def logits(*biases):
        arguments = [x]
        for weight, bias in zip(weights, biases):
            arguments += [weight, bias]
        return lib.lenet(*arguments)[0]
    biases = [params[f"{layer}.bias"].detach().clone().requires_grad_()
              for layer in ("conv1", "conv2", "fc1", "fc2", "fc3")]
    assert torch.autograd.gradgradcheck(logits, biases)


# third order: the backward ops' own double backward ------------------------------------------------

def test_relu_backward_gradgradcheck(device):
    result = F.relu(rand(3, 4, 5, device=device)).detach()
    assert torch.autograd.gradgradcheck(lambda g: lib.relu_backward(g, result),
                                        [rand(3, 4, 5, device=device)])


@pytest.mark.parametrize("config", LINEAR, ids=str)
def test_linear_backward_gradgradcheck(config, device):
    input_shape, out_features = config
    x, w = rand(*input_shape, device=device), rand(out_features, input_shape[-1], device=device)
    g = rand(*input_shape[:-1], out_features, device=device)
    assert torch.autograd.gradgradcheck(
        lambda g, x, w: lib.linear_backward(g, x, w, [True, True, True]), [g, x, w])


@pytest.mark.parametrize("config", CONV, ids=str)
def test_conv2d_backward_gradgradcheck(config, device):
    (x, w), options = conv_args(config, False, device)
    g = torch.randn_like(F.conv2d(x, w, **options)).requires_grad_()
    args = [options["stride"], options["padding"], options["dilation"]]
    args = [list(a) if isinstance(a, tuple) else [a, a] for a in args] + [options["groups"]]
    assert torch.autograd.gradgradcheck(
        lambda g, x, w: lib.conv2d_backward(g, x, w, *args, [True, True, True]), [g, x, w])


@pytest.mark.parametrize("config", POOL, ids=str)
def test_max_pool2d_backward_and_gather_gradgradcheck(config, device):
    x = rand(*config[0], device=device, requires_grad=False)
    _, indices = F.max_pool2d(x, *config[1:], return_indices=True)
    g = rand(*indices.shape, device=device)
    size = list(x.shape)
    assert torch.autograd.gradgradcheck(lambda g: lib.max_pool2d_backward(g, indices, size), [g])
    assert torch.autograd.gradgradcheck(lambda x: lib.max_pool2d_gather(x, indices),
                                        [x.requires_grad_()])


# second order against stock ----------------------------------------------------------------------

def second_order(fn, tensors, first_wrt):
    """The gradients of a random projection of fn's output w.r.t. tensors[i] for i in first_wrt
    (create_graph=True), then those of a random projection of them w.r.t. every tensor."""
    tensors = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*tensors)
    gen = torch.Generator().manual_seed(out.numel())
    projection = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
    firsts = torch.autograd.grad((out * projection).sum(), [tensors[i] for i in first_wrt],
                                 create_graph=True)
    penalty = sum((first * torch.randn(first.shape, generator=gen, dtype=first.dtype)
                   .to(first.device)).sum() for first in firsts)
    seconds = torch.autograd.grad(penalty, tensors, allow_unused=True, materialize_grads=True)
    return [first.detach() for first in firsts], list(seconds)


def assert_second_order_matches(ours, stock, tensors, first_wrt):
    for got, expected in zip(second_order(ours, tensors, first_wrt),
                             second_order(stock, tensors, first_wrt)):
        for i, (g, e) in enumerate(zip(got, expected)):
            torch.testing.assert_close(g, e, msg=lambda m: f"gradient {i}: {m}")


WRT = {"all": None, "input": [0], "weight": [1], "bias": [2]}


@pytest.mark.parametrize("wrt", WRT)
@pytest.mark.parametrize("config", CONV, ids=str)
def test_conv2d_second_order_matches_stock(config, wrt, device):
    tensors, options = conv_args(config, True, device)
    # squared, so that the first gradients depend on the inputs through the output too
    ours = lambda *t: conv_fn(F, options)(*t) ** 2  # noqa: E731
    stock = lambda *t: conv_fn(TF, options)(*t) ** 2  # noqa: E731
    assert_second_order_matches(ours, stock, tensors, WRT[wrt] or [0, 1, 2])


@pytest.mark.parametrize("wrt", WRT)
@pytest.mark.parametrize("config", LINEAR, ids=str)
def test_linear_second_order_matches_stock(config, wrt, device):
    input_shape, out_features = config
    tensors = [rand(*input_shape, device=device), rand(out_features, input_shape[-1], device=device),
               rand(out_features, device=device)]
    # a square penalty makes the first gradients depend on the inputs through relu and the square
    ours = lambda x, w, b: F.relu(F.linear(x, w, b)) ** 2  # noqa: E731
    stock = lambda x, w, b: TF.relu(TF.linear(x, w, b)) ** 2  # noqa: E731
    assert_second_order_matches(ours, stock, tensors, WRT[wrt] or [0, 1, 2])


@pytest.mark.parametrize("config", POOL, ids=str)
def test_max_pool2d_relu_second_order_matches_stock(config, device):
    def network(functional):
        pool = pool_fn(functional, config)
        return lambda x: pool(functional.relu(x)) ** 3
    assert_second_order_matches(network(F), network(TF), [rand(*config[0], device=device)], [0])


def stock_block(x, w, b):
    return TF.max_pool2d(TF.relu(TF.conv2d(x, w, b)), 2)


def test_conv2d_relu_max_pool2d_second_order_matches_stock():
    tensors = [rand(2, 3, 10, 9), rand(4, 3, 3, 3), rand(4)]
    ours = lambda x, w, b: lib.conv2d_relu_max_pool2d(x, w, b)[0] ** 2  # noqa: E731
    stock = lambda x, w, b: stock_block(x, w, b) ** 2  # noqa: E731
    for wrt in ([0, 1, 2], [0], [1], [2]):
        assert_second_order_matches(ours, stock, tensors, wrt)


@pytest.mark.parametrize("model", ["LeNet", "FusedLeNet"])
@pytest.mark.parametrize("wrt", ["input", "parameters"])
def test_lenet_second_order_matches_stock(model, wrt):
    ours = getattr(lenet_ext.models, model)().double()
    stock = lenet_ext.models.StockLeNet().double()
    stock.load_state_dict(ours.state_dict())
    names = [name for name, _ in ours.named_parameters()]
    tensors = [torch.randn(3, 1, 32, 32, dtype=torch.float64)] + [p for p in ours.parameters()]

    def call(net):
        return lambda x, *params: torch.func.functional_call(net, dict(zip(names, params)), (x,))
    first_wrt = [0] if wrt == "input" else list(range(1, len(tensors)))
    assert_second_order_matches(call(ours), call(stock), tensors, first_wrt)


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # vmap: no batching rule
def test_hessian_by_jacrev_of_jacrev_matches_stock():
    # reverse over reverse (torch.func.hessian is forward over reverse, and forward mode is refused)
    x, w, b = rand(2, 3), rand(4, 3), rand(4)

    def hessian(functional):
        loss = lambda x: (functional.relu(functional.linear(x, w, b)) ** 2).sum()  # noqa: E731
        return torch.func.jacrev(torch.func.jacrev(loss))(x)
    torch.testing.assert_close(hessian(F), hessian(TF))


# training with a gradient penalty: loss + λ·‖∂loss/∂x‖² ----------------------------------------------

def penalised_training(model, data, steps, lam=0.5, lr=0.05):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for x, target in data[:steps]:
        x = x.clone().requires_grad_()
        loss = TF.cross_entropy(model(x), target)
        (grad_x,) = torch.autograd.grad(loss, x, create_graph=True)
        optimizer.zero_grad()
        (loss + lam * grad_x.pow(2).sum()).backward()
        optimizer.step()
    return dict(model.named_parameters())


def small_net(nn):
    return torch.nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                               torch.nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double()


def test_gradient_penalty_training_matches_stock():
    ours, stock = small_net(lenet_ext.nn), small_net(torch.nn)
    stock.load_state_dict(ours.state_dict())
    data = [(torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (8,)))
            for _ in range(5)]
    trained_ours, trained_stock = penalised_training(ours, data, 5), penalised_training(stock, data, 5)
    for name, parameter in trained_stock.items():
        assert not torch.equal(parameter, dict(small_net(torch.nn).named_parameters())[name])
        torch.testing.assert_close(trained_ours[name], parameter, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("model", ["LeNet", "FusedLeNet"])
def test_lenet_gradient_penalty_training_matches_stock(model):
    ours = getattr(lenet_ext.models, model)().double()
    stock = lenet_ext.models.StockLeNet().double()
    stock.load_state_dict(ours.state_dict())
    initial = {name: p.detach().clone() for name, p in stock.named_parameters()}
    data = [(torch.randn(4, 1, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,)))
            for _ in range(3)]
    trained_ours, trained_stock = penalised_training(ours, data, 3), penalised_training(stock, data, 3)
    for name, parameter in trained_stock.items():
        assert not torch.equal(parameter, initial[name])
        torch.testing.assert_close(trained_ours[name], parameter, msg=lambda m: f"{name}: {m}")


# the nodes and the gather op ----------------------------------------------------------------------

def test_backward_ops_record_their_nodes():
    x, w, b = rand(1, 2, 6, 6), rand(3, 2, 3, 3), rand(3)
    y = F.max_pool2d(F.relu(F.linear(F.conv2d(x, w, b), rand(4, 4))), 2)
    grads = torch.autograd.grad(y.pow(2).sum(), [x, w], create_graph=True)
    assert [g.grad_fn.name() for g in grads] == ["lenet_ext::Conv2dBackwardBackward"] * 2
    (grad,) = torch.autograd.grad(y.pow(2).sum(), x)  # no create_graph: nothing recorded
    assert grad.grad_fn is None and not grad.requires_grad


@pytest.mark.parametrize("op", ["conv2d_relu_max_pool2d", "lenet"])
def test_fused_backward_ops_called_directly_refuse_double_backward(op):
    # the fused ops' recorded backward runs the unfused ops; their backward ops have no derivative
    x = torch.randn(2, 1, 32, 32)
    if op == "lenet":
        net = lenet_ext.models.FusedLeNet()
        outputs = lib.lenet(x, *[p.detach() for p in net.parameters()])
        weights = [p.detach() for name, p in net.named_parameters() if name.endswith("weight")]
        args = (outputs[0].detach().requires_grad_(), x, *weights, *outputs[1:], [True] * 11)
    else:
        w = torch.randn(3, 1, 5, 5)
        output, indices = lib.conv2d_relu_max_pool2d(x, w, torch.randn(3))
        args = (output.detach().requires_grad_(), output, indices, x, w, [True] * 3)
    grads = getattr(lib, f"{op}_backward")(*args)
    with pytest.raises(RuntimeError, match=f"derivative for lenet_ext::{op}_backward is not "
                                           f"implemented"):
        grads[1].sum().backward()


@pytest.mark.parametrize("config", POOL, ids=str)
def test_max_pool2d_gather_matches_stock(config, device, dtype):
    x = torch.randn(config[0], dtype=dtype, device=device)
    _, indices = TF.max_pool2d(x, *config[1:], return_indices=True)
    expected = torch.gather(x.flatten(-2), -1, indices.flatten(-2)).view(indices.shape)
    torch.testing.assert_close(lib.max_pool2d_gather(x, indices), expected, rtol=0, atol=0)
    torch.library.opcheck(lib.max_pool2d_gather, (x, indices))


@pytest.mark.parametrize("make, message", [
    (lambda x, i: (x, i + 36), r"max_pool2d_gather: expected indices in \[0, H\*W\) = \[0, 36\)"),
    (lambda x, i: (x, -i - 1), r"max_pool2d_gather: expected indices in \[0, H\*W\)"),
    (lambda x, i: (x, i.int()), r"max_pool2d_gather: expected indices to have dtype int64, but got Int"),
    (lambda x, i: (x.int(), i), r"max_pool2d_gather: expected input to have dtype float32, float64, bfloat16 or float16"),
    (lambda x, i: (x, i[:1]), r"max_pool2d_gather: expected indices to match input \(shape \[2, 3, 6, 6\]\)"),
    (lambda x, i: (x[0, 0], i[0, 0]), r"max_pool2d_gather: expected input to be a 3-D .* but got a 2-D"),
])
def test_max_pool2d_gather_bad_input(make, message, device):
    x = torch.randn(2, 3, 6, 6, device=device)
    _, indices = TF.max_pool2d(x, 2, return_indices=True)
    with pytest.raises((RuntimeError, TypeError), match=message):
        lib.max_pool2d_gather(*make(x, indices))
