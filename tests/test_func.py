"""torch.func over lenet_ext: grad, vjp, jacrev, vmap and per-sample gradients (vmap of grad) over
each functional op and over LeNet and FusedLeNet give what the same transform gives over stock
PyTorch, in float64."""
from functools import partial

import pytest
import torch
import torch.nn.functional as stock_F
from torch.func import functional_call, grad, jacrev, vjp, vmap

from lenet_ext import functional as ext_F
from lenet_ext.models import FusedLeNet, LeNet, StockLeNet

# Every op has a batching rule (lenet_ext.batching): functorch's per-sample fallback, which warns
# "There is a performance drop", must not run.
pytestmark = pytest.mark.filterwarnings("error::UserWarning")

BATCH = 3  # samples that vmap maps over


def projected(fn, projection):
    """A scalar of fn's output: a random projection, so a gradient checks every output element."""
    return lambda *args: (fn(*args) * projection).sum()


def every_arg(args):
    return tuple(range(len(args)))


# name -> transform(fn, args, projection of fn's output, in_dims); args carry a leading BATCH
# dimension where in_dims maps over them.
TRANSFORMS = {
    "grad": lambda fn, args, projection, in_dims: grad(projected(fn, projection),
                                                       argnums=every_arg(args))(*args),
    "vjp": lambda fn, args, projection, in_dims: vjp(fn, *args)[1](projection),
    "jacrev": lambda fn, args, projection, in_dims: jacrev(fn, argnums=every_arg(args))(*args),
    "vmap": lambda fn, args, projection, in_dims: vmap(fn, in_dims)(*args),
    "vmap(grad)": lambda fn, args, projection, in_dims: vmap(
        grad(projected(fn, projection), argnums=every_arg(args)), in_dims)(*args),
}
MAPPED = ("vmap", "vmap(grad)")


def transform_both(transform, ours, stock, args, in_dims):
    """The transform over ours and over stock, with the same fresh projection of the output."""
    mapped = transform in MAPPED
    sample = [arg if dim is None else arg[0] for arg, dim in zip(args, in_dims)] if mapped else args
    projection = torch.randn_like(stock(*sample))
    return [TRANSFORMS[transform](fn, args, projection, in_dims) for fn in (ours, stock)]


# name -> (the call, given a functional module; shapes of its tensor arguments)
OPS = {
    "relu": (lambda F, x: F.relu(x), [(3, 5)]),
    "linear": (lambda F, x, w, b: F.linear(x, w, b), [(3, 5), (4, 5), (4,)]),
    "conv2d": (lambda F, x, w, b: F.conv2d(x, w, b, stride=(1, 2), padding=1),
               [(2, 3, 7, 6), (4, 3, 3, 2), (4,)]),
    "max_pool2d": (lambda F, x: F.max_pool2d(x, 2, stride=(2, 1)), [(2, 3, 6, 7)]),
}


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("op", OPS)
def test_op_under_transform_matches_stock(op, transform):
    call, shapes = OPS[op]
    batch = (BATCH,) if transform in MAPPED else ()
    args = [torch.randn(*batch, *shape, dtype=torch.float64) for shape in shapes]
    ours, expected = transform_both(transform, partial(call, ext_F), partial(call, stock_F), args,
                                    in_dims=(0,) * len(args))  # vmap: weights per sample too
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("network", [LeNet, FusedLeNet])
def test_network_under_transform_matches_stock(network, transform):
    stock_net = StockLeNet().double()
    net = network().double()
    net.load_state_dict(stock_net.state_dict())
    # Parameters other than the networks' own: a forward that ignored them would be caught.
    params = {name: p.detach() for name, p in StockLeNet().double().named_parameters()}
    batch = (BATCH,) if transform in MAPPED else ()
    images = torch.randn(*batch, 2, 1, 32, 32, dtype=torch.float64)  # vmap: BATCH batches of 2
    ours, expected = transform_both(
        transform, lambda p, x: functional_call(net, p, (x,)),
        lambda p, x: functional_call(stock_net, p, (x,)), (params, images), in_dims=(None, 0))
    torch.testing.assert_close(ours, expected)


# Forward mode -----------------------------------------------------------------------------------
# None of our ops has a tangent (jvp) formula: each refuses a tangent, naming itself, where it would
# otherwise return a zero derivative. NotImplementedError is a RuntimeError, as ATen raises for an
# op without a forward formula.

tree_map, forward_ad = torch.utils._pytree.tree_map, torch.autograd.forward_ad


def dual_call(fn, args):
    with forward_ad.dual_level():
        return fn(*tree_map(lambda arg: forward_ad.make_dual(arg, torch.randn_like(arg)), args))


# name -> forward-mode transform(fn, args); jacfwd is taken with respect to the first argument, the
# input (a network's 62k parameters would make a 62k x 62k basis of tangents).
FORWARD_MODE = {
    "jvp": lambda fn, args: torch.func.jvp(fn, args, tree_map(torch.randn_like, args)),
    "jacfwd": lambda fn, args: torch.func.jacfwd(fn)(*args),
    "forward_ad": dual_call,
}

# The fused block has no functional form: called as the op.
BLOCK = (lambda F, x, w, b: torch.ops.lenet_ext.conv2d_relu_max_pool2d(x, w, b)[0],
         [(2, 1, 8, 8), (3, 1, 5, 5), (3,)])
# torch's first make_dual loads its jvp decompositions with torch.jit.script, which warns.
jvp_decompositions_warn = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.mark.parametrize("transform", FORWARD_MODE)
@pytest.mark.parametrize("op", [*OPS, "conv2d_relu_max_pool2d"])
@jvp_decompositions_warn
def test_op_refuses_forward_mode(op, transform):
    call, shapes = {**OPS, "conv2d_relu_max_pool2d": BLOCK}[op]
    args = tuple(torch.randn(*shape, dtype=torch.float64) for shape in shapes)
    with pytest.raises(NotImplementedError, match=rf"^lenet_ext\.{op}: forward-mode AD"):
        FORWARD_MODE[transform](partial(call, ext_F), args)


@pytest.mark.parametrize("transform", FORWARD_MODE)
@pytest.mark.parametrize("network", [LeNet, FusedLeNet])
@jvp_decompositions_warn
def test_network_refuses_forward_mode(network, transform):
    net = network().double()
    params = {name: p.detach() for name, p in net.named_parameters()}
    images = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    # LeNet's first op refuses, or FusedLeNet's one op (outside torch.func it runs the fused lenet)
    with pytest.raises(NotImplementedError, match=r"^lenet_ext\.(conv2d|lenet): forward-mode AD"):
        FORWARD_MODE[transform](lambda x, p: functional_call(net, p, (x,)), (images, params))
