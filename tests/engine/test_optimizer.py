"""build_cell_optimizer: SOLVER.OPTIMIZER, detectron2's parameter groups, and both clippings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from detectron2.config import CfgNode

from cellseg_d2.config import get_cellseg_cfg
from cellseg_d2.engine import build_cell_optimizer
from tests.conftest import instant_cfg


def _cfg(*opts: object) -> CfgNode:
    """Project defaults with plain SGD (lr 1, no momentum, no decay, no clipping) and ``opts``."""
    cfg = get_cellseg_cfg()
    cfg.merge_from_list(
        [
            "SOLVER.OPTIMIZER", "SGD",
            "SOLVER.BASE_LR", 1.0,
            "SOLVER.MOMENTUM", 0.0,
            "SOLVER.WEIGHT_DECAY", 0.0,
            "SOLVER.WEIGHT_DECAY_NORM", 0.0,
            "SOLVER.CLIP_GRADIENTS.ENABLED", False,
            *opts,
        ]
    )  # fmt: skip
    return cfg


class _Net(torch.nn.Module):
    """A conv, a GroupNorm, a linear layer and one frozen parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.norm = torch.nn.GroupNorm(2, 4)
        self.fc = torch.nn.Linear(4, 2)
        self.frozen = torch.nn.Parameter(torch.zeros(3), requires_grad=False)


def _hyperparams(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, tuple]:
    """``name -> (lr, weight_decay)`` of every parameter the optimizer holds (each once)."""
    names = {id(p): n for n, p in model.named_parameters()}
    found: dict[str, tuple] = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = names[id(param)]
            assert name not in found, f"{name} is in two groups"
            found[name] = (group["lr"], group["weight_decay"])
    return found


def _step_with_gradient(model: torch.nn.Module, optimizer, value: float) -> torch.Tensor:
    """Give every parameter the gradient ``value``, step, and return the parameter change."""
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    for p in model.parameters():
        p.grad = torch.full_like(p, value)
    optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()]) - before


def test_optimizer_choice_and_full_model_clipping(tmp_path: Path) -> None:
    cfg = instant_cfg("unused", tmp_path)
    model = torch.nn.Linear(10, 10)
    assert isinstance(build_cell_optimizer(cfg, model), torch.optim.AdamW)
    cfg.merge_from_list(["SOLVER.OPTIMIZER", "LION"])
    with pytest.raises(NotImplementedError, match="LION"):
        build_cell_optimizer(cfg, model)
    cfg.merge_from_list(["SOLVER.OPTIMIZER", "SGD", "SOLVER.MOMENTUM", 0.0])
    cfg.merge_from_list(["SOLVER.BASE_LR", 1.0, "SOLVER.WEIGHT_DECAY", 0.0])
    cfg.merge_from_list(["SOLVER.WEIGHT_DECAY_NORM", 0.0, "SOLVER.CLIP_GRADIENTS.ENABLED", True])
    cfg.merge_from_list(["SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model"])
    cfg.merge_from_list(["SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 10.0])
    optimizer = build_cell_optimizer(cfg, model)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    for p in model.parameters():
        p.grad = torch.full_like(p, 1000.0)
    optimizer.step()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.linalg.vector_norm(before - after).item() == pytest.approx(10.0, rel=1e-4)


def test_parameter_groups_norm_and_bias_settings() -> None:
    cfg = _cfg(
        "SOLVER.BASE_LR", 0.1,
        "SOLVER.WEIGHT_DECAY", 1e-4,
        "SOLVER.WEIGHT_DECAY_NORM", 0.0,
        "SOLVER.BIAS_LR_FACTOR", 2.0,
        "SOLVER.WEIGHT_DECAY_BIAS", 1e-5,
    )  # fmt: skip
    model = _Net()
    optimizer = build_cell_optimizer(cfg, model)
    assert _hyperparams(optimizer, model) == {
        "conv.weight": (0.1, 1e-4),
        "fc.weight": (0.1, 1e-4),
        "norm.weight": (0.1, 0.0),  # no weight decay on normalisation layers
        # bias settings override the norm ones: detectron2's rule for a norm layer's bias
        "conv.bias": (0.2, 1e-5),
        "norm.bias": (0.2, 1e-5),
        "fc.bias": (0.2, 1e-5),
    }  # the frozen parameter is left out


def test_default_bias_settings_follow_the_weights() -> None:
    cfg = _cfg("SOLVER.BASE_LR", 0.01, "SOLVER.WEIGHT_DECAY", 1e-4, "SOLVER.WEIGHT_DECAY_NORM", 0.0)
    model = _Net()
    found = _hyperparams(build_cell_optimizer(cfg, model), model)
    assert found["conv.bias"] == found["fc.weight"] == (0.01, 1e-4)
    assert found["norm.bias"] == found["norm.weight"] == (0.01, 0.0)


def test_sgd_and_adamw_take_their_settings() -> None:
    model = _Net()
    sgd = build_cell_optimizer(_cfg("SOLVER.MOMENTUM", 0.8, "SOLVER.NESTEROV", True), model)
    assert isinstance(sgd, torch.optim.SGD) and not isinstance(sgd, torch.optim.AdamW)
    assert (sgd.defaults["momentum"], sgd.defaults["nesterov"]) == (0.8, True)
    adamw = build_cell_optimizer(_cfg("SOLVER.OPTIMIZER", "adamw", "SOLVER.BASE_LR", 3e-4), model)
    assert type(adamw) is torch.optim.AdamW  # the name is case-insensitive; no clipping wrapper
    assert {g["lr"] for g in adamw.param_groups} == {3e-4}


def test_unknown_optimizer_names_the_key() -> None:
    with pytest.raises(NotImplementedError) as info:
        build_cell_optimizer(_cfg("SOLVER.OPTIMIZER", "Adam"), _Net())
    assert str(info.value) == "SOLVER.OPTIMIZER 'Adam': use ADAMW or SGD"


def test_without_clipping_the_step_is_the_plain_gradient() -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = build_cell_optimizer(_cfg(), model)
    assert type(optimizer) is torch.optim.SGD
    assert torch.allclose(_step_with_gradient(model, optimizer, 1000.0), torch.tensor(-1000.0))


def test_full_model_clipping_scales_all_gradients_together() -> None:
    cfg = _cfg(
        "SOLVER.CLIP_GRADIENTS.ENABLED", True,
        "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 3.0,
    )  # fmt: skip
    model = torch.nn.Linear(3, 3)  # 12 parameters
    optimizer = build_cell_optimizer(cfg, model)
    assert type(optimizer).__name__ == "SGDWithFullModelClip"
    assert isinstance(optimizer, torch.optim.SGD)
    change = _step_with_gradient(model, optimizer, 1000.0)
    # one norm over all 12 gradients: each becomes 3 / sqrt(12), the direction is kept
    assert torch.allclose(change, torch.full((12,), -3.0 / 12**0.5), atol=1e-5)
    small = _step_with_gradient(model, optimizer, 0.5)  # norm 1.73 < 3: left alone
    assert torch.allclose(small, torch.full((12,), -0.5), atol=1e-6)


def test_detectron2_value_clipping_works_per_element() -> None:
    cfg = _cfg(
        "SOLVER.CLIP_GRADIENTS.ENABLED", True,
        "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "value",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0.25,
    )  # fmt: skip
    model = torch.nn.Linear(3, 3)
    optimizer = build_cell_optimizer(cfg, model)
    assert "FullModel" not in type(optimizer).__name__ and isinstance(optimizer, torch.optim.SGD)
    change = _step_with_gradient(model, optimizer, 1000.0)
    assert torch.allclose(change, torch.full((12,), -0.25))
