"""The optimizer of ``SOLVER.OPTIMIZER`` with the project's full-model gradient clipping."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

__all__ = ["build_cell_optimizer"]


def _with_full_model_clipping(
    optimizer_type: type[torch.optim.Optimizer], max_norm: float
) -> type[torch.optim.Optimizer]:
    """Subclass ``optimizer_type`` so that ``step`` first clips the norm of all gradients together.

    detectron2's own clipping works per parameter; the seed recipe clips the whole model's
    gradient norm (``torch.nn.utils.clip_grad_norm_``), as Mask2Former does. With AMP, the
    ``GradScaler`` unscales gradients before calling ``step``, so the norm is in true units.
    """

    class FullModelGradientClippingOptimizer(optimizer_type):
        def step(self, closure: Any = None) -> Any:
            params = itertools.chain(*(group["params"] for group in self.param_groups))
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return super().step(closure=closure)

    FullModelGradientClippingOptimizer.__name__ = f"{optimizer_type.__name__}WithFullModelClip"
    return FullModelGradientClippingOptimizer


def build_cell_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer named by ``SOLVER.OPTIMIZER`` ("ADAMW" or "SGD").

    Parameter groups (norm and bias weight decay, bias LR factor) are detectron2's defaults;
    clipping follows ``SOLVER.CLIP_GRADIENTS`` with the extra ``CLIP_TYPE: full_model``.

    Raises:
        NotImplementedError: for any other optimizer name.
    """
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        optimizer_type, kwargs = (
            torch.optim.SGD,
            {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV},
        )
    elif name == "ADAMW":
        optimizer_type, kwargs = torch.optim.AdamW, {}
    else:
        raise NotImplementedError(f"SOLVER.OPTIMIZER '{cfg.SOLVER.OPTIMIZER}': use ADAMW or SGD")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_type = _with_full_model_clipping(optimizer_type, clip.CLIP_VALUE)
    else:
        optimizer_type = maybe_add_gradient_clipping(cfg, optimizer_type)
    return optimizer_type(params, lr=cfg.SOLVER.BASE_LR, **kwargs)
