"""Tests for ticketlab.prunable: which parameters pruning may touch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ticketlab.models import build_model
from ticketlab.prunable import (PrunableError, UnprunedWeightsWarning, output_parameter_name, prunable_layers,
                                prunable_parameters)


class Net(nn.Module):
    """Conv -> BN -> (Conv, BN, ReLU) -> Linear; every prunable layer has a bias."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.body = nn.Sequential(nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - not needed here
        return self.head(self.body(self.bn(self.stem(x))).flatten(1))


ALL = ["stem.weight", "body.0.weight", "head.weight"]


def test_default_picks_linear_and_conv_weights_in_definition_order():
    model = Net()
    params = prunable_parameters(model)
    assert list(params) == ALL
    # the very Parameter objects, not copies
    assert params["stem.weight"] is model.stem.weight
    assert params["body.0.weight"] is model.body[0].weight
    assert params["head.weight"] is model.head.weight
    # biases and BatchNorm are never prunable
    all_names = {n for n, _ in model.named_parameters()}
    assert {"stem.bias", "bn.weight", "bn.bias", "body.1.weight", "head.bias"} <= all_names
    assert not any(n.endswith(".bias") or n.startswith("bn.") or n.startswith("body.1.") for n in params)


def test_prunable_layers_lists_modules():
    model = Net()
    layers = prunable_layers(model)
    assert [n for n, _ in layers] == ["stem", "body.0", "head"]
    assert layers[2][1] is model.head


def test_include_first_and_output():
    model = Net()
    assert list(prunable_parameters(model, include_first=False)) == ["body.0.weight", "head.weight"]
    assert list(prunable_parameters(model, include_output=False)) == ["stem.weight", "body.0.weight"]
    assert list(prunable_parameters(model, include_first=False, include_output=False)) == ["body.0.weight"]


def test_exclude_by_module_or_parameter_name():
    model = Net()
    assert list(prunable_parameters(model, exclude=["body"])) == ["stem.weight", "head.weight"]
    assert list(prunable_parameters(model, exclude=["body.0"])) == ["stem.weight", "head.weight"]
    assert list(prunable_parameters(model, exclude=["head.weight"])) == ["stem.weight", "body.0.weight"]
    assert list(prunable_parameters(model, exclude=("stem", "head"))) == ["body.0.weight"]
    # excluding a non-prunable parameter is allowed and changes nothing
    assert list(prunable_parameters(model, exclude=["bn"])) == ALL


def test_exclude_matches_whole_name_components_only():
    model = Net()
    # "bod" is a prefix of "body" but no module or parameter is called that
    with pytest.raises(PrunableError, match=r"'bod'"):
        prunable_parameters(model, exclude=["bod"])


def test_exclude_unknown_name_lists_prunable_parameters():
    with pytest.raises(PrunableError, match=r"\['nope'\].*stem\.weight"):
        prunable_parameters(Net(), exclude=["nope"])


def test_excluding_everything_raises():
    with pytest.raises(PrunableError, match="nothing would be pruned"):
        prunable_parameters(Net(), exclude=["stem", "body", "head"])
    single = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(PrunableError):
        prunable_parameters(single, include_first=False)
    with pytest.raises(PrunableError):
        prunable_parameters(single, include_output=False)


def test_model_without_linear_or_conv_raises():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.ReLU())
    with pytest.raises(PrunableError, match="no Linear or Conv"):
        prunable_parameters(model)
    with pytest.raises(PrunableError, match="no Linear or Conv"):
        output_parameter_name(model)


def test_conv1d_and_conv3d_are_prunable():
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Conv3d(2, 2, 1), nn.Embedding(4, 2))
    # embeddings are not pruned by default, but never silently: the warning names them
    with pytest.warns(UnprunedWeightsWarning, match=r"2\.weight \(4, 2\) of Embedding"):
        assert list(prunable_parameters(model)) == ["0.weight", "1.weight"]
    assert list(prunable_parameters(model, include=["2"])) == ["0.weight", "1.weight", "2.weight"]


def test_bare_layer_is_named_weight():
    layer = nn.Linear(3, 2)
    assert list(prunable_parameters(layer)) == ["weight"]
    assert output_parameter_name(layer) == "weight"


def test_output_parameter_name():
    assert output_parameter_name(Net()) == "head.weight"


def test_registry_models():
    lenet = build_model("lenet_300_100", (1, 28, 28), 10)
    params = prunable_parameters(lenet)
    assert [(n, tuple(p.shape)) for n, p in params.items()] == [
        ("hidden.0.weight", (300, 784)), ("hidden.2.weight", (100, 300)), ("fc.weight", (10, 100)),
    ]
    assert output_parameter_name(lenet) == "fc.weight"

    resnet = build_model("resnet20", (3, 32, 32), 10, width=4)
    params = prunable_parameters(resnet)
    assert all(p.dim() in (2, 4) for p in params.values())
    assert len(params) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in resnet.modules())
    assert not any("bn" in n or n.endswith("bias") for n in params)
    assert list(params)[-1] == output_parameter_name(resnet) == "fc.weight"
    assert len(prunable_parameters(resnet, include_first=False, include_output=False)) == len(params) - 2


def test_prunable_error_is_a_value_error():
    assert issubclass(PrunableError, ValueError)
