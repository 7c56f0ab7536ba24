"""State: state_dicts behave as torch's. A wrong-shaped tensor is refused with torch's own
error, and a checkpoint written by the training CLI round-trips through our and the stock network."""
import pytest
import torch

from lenet_ext import train
from lenet_ext.models import LeNet, StockLeNet
from helpers import GRAD_TOL, OUTPUT_TOL

KEYS = list(StockLeNet().state_dict())


def load_error(network_class, state):
    """torch's message, but for its first line, which names the class."""
    with pytest.raises(RuntimeError, match=rf"Error\(s\) in loading state_dict for "
                                           rf"{network_class.__name__}:") as error:
        network_class().load_state_dict(state)
    return str(error.value).split("\n", 1)[1]


@pytest.mark.parametrize("key", KEYS)
def test_wrong_shape_raises_torchs_size_mismatch(key):
    state = StockLeNet().state_dict()
    state[key] = torch.randn(*(size + 1 for size in state[key].shape))
    message = load_error(LeNet, state)
    assert f"size mismatch for {key}: copying a param with shape" in message
    assert message == load_error(StockLeNet, state)


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_wrong_keys_raise_as_in_torch(change):
    state = StockLeNet().state_dict()
    if change == "missing":
        del state["fc2.bias"]
    else:
        state["fc4.weight"] = torch.randn(1)
    message = load_error(LeNet, state)
    assert ("Missing key(s)" if change == "missing" else "Unexpected key(s)") in message
    assert message == load_error(StockLeNet, state)


def test_cli_checkpoint_round_trips_through_ours_and_stock(capsys, synthetic_mnist, tmp_path):
    checkpoint = tmp_path / "lenet.pt"
    code = train.main(["--data-dir", str(synthetic_mnist), "--epochs", "1", "--threads", "1",
                       "--checkpoint", str(checkpoint), "--no-download"])
    assert code == 0, capsys.readouterr().err
    state = torch.load(checkpoint)["model"]  # the state_dict inside the training checkpoint
    ours, stock = LeNet(), StockLeNet()
    ours.load_state_dict(state)
    stock.load_state_dict(ours.state_dict())  # through ours, back out, into stock
    assert state.keys() == stock.state_dict().keys()
    for key, value in state.items():
        assert torch.equal(stock.state_dict()[key], value), key
    images = torch.randn(8, 1, 32, 32)
    ours_out, stock_out = ours(images), stock(images)
    torch.testing.assert_close(ours_out, stock_out, **OUTPUT_TOL)
    ours_grads = torch.autograd.grad(ours_out.sum(), list(ours.parameters()))
    stock_grads = torch.autograd.grad(stock_out.sum(), list(stock.parameters()))
    for ours_grad, stock_grad in zip(ours_grads, stock_grads):
        torch.testing.assert_close(ours_grad, stock_grad, **GRAD_TOL)
