"""The project config: :func:`add_cellseg_config` (every new key, with a comment; in
:mod:`~cellseg_d2.config.defaults`), the safe
loader every tool reads configs with, and the rules that finish a config for a run."""

from cellseg_d2.config.build import (
    ITERATION_EPOCH_KEYS,
    build_config,
    describe_schedule,
    finish_config,
    settle_iteration_epoch_keys,
)
from cellseg_d2.config.loader import (
    COMMAND_LINE_ONLY_KEYS,
    add_cellseg_config,
    config_file_keys,
    default_cells_root,
    get_cellseg_cfg,
    load_cellseg_config,
    merge_config_file,
    merge_config_overrides,
)
from cellseg_d2.config.scale import (
    anchor_fit_warning,
    input_scale,
    model_pixel_size,
    resolve_input_scale,
    scale_for_diameter,
)
from cellseg_d2.config.schedule import (
    adapt_config_to_machine,
    apply_epoch_schedule,
    fit_warmup_to_schedule,
)

__all__ = [
    "COMMAND_LINE_ONLY_KEYS",
    "ITERATION_EPOCH_KEYS",
    "build_config",
    "describe_schedule",
    "finish_config",
    "settle_iteration_epoch_keys",
    "adapt_config_to_machine",
    "anchor_fit_warning",
    "input_scale",
    "model_pixel_size",
    "resolve_input_scale",
    "scale_for_diameter",
    "add_cellseg_config",
    "config_file_keys",
    "apply_epoch_schedule",
    "default_cells_root",
    "fit_warmup_to_schedule",
    "get_cellseg_cfg",
    "load_cellseg_config",
    "merge_config_file",
    "merge_config_overrides",
]
