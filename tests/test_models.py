import pytest
import torch
from torch import nn

from flaudit.core.errors import ConfigError, UnknownNameError
from flaudit.scenarios.models import MODELS, build_model

SHAPES = [(1, 8, 8), (3, 32, 32)]


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("shape", SHAPES)
def test_every_model_classifies_and_trains(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, 7)
    x, y = torch.rand(4, *shape), torch.randint(0, 7, (4,))
    logits = model(x)
    assert logits.shape == (4, 7)
    nn.functional.cross_entropy(logits, y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_cnn_is_the_studys_architecture():
    model = build_model("cnn", (3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (3, 3)), (64, (3, 3))]
    assert [lin.out_features for lin in linears] == [512, 10]


def test_mlp_has_one_hidden_layer_of_256():
    model = build_model("mlp", (3, 32, 32), 10)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [256, 10]


def test_lenet_sigmoid_option():
    sigmoid = build_model("lenet", (1, 16, 16), 10)
    relu = build_model("lenet", (1, 16, 16), 10, activation="relu")
    assert any(isinstance(m, nn.Sigmoid) for m in sigmoid.modules())
    assert not any(isinstance(m, nn.Sigmoid) for m in relu.modules())


def test_resnet18_small_input_stem():
    small = build_model("resnet18", (3, 32, 32), 10)
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)
    large = build_model("resnet18", (3, 128, 128), 10)
    assert large.conv1.kernel_size == (7, 7)


def test_unknown_model_and_option_are_clear():
    with pytest.raises(UnknownNameError, match="unknown model 'cnnn'. Did you mean 'cnn'"):
        build_model("cnnn", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="model 'cnn' has no option 'depth'"):
        build_model("cnn", (1, 8, 8), 10, depth=3)
    with pytest.raises(ConfigError, match="activation='gelu'"):
        build_model("mlp", (1, 8, 8), 10, activation="gelu")
