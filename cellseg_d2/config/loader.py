"""Reading config files safely: the one way the tools load a config.

The keys themselves live in :mod:`~cellseg_d2.config.defaults`. Config files are read by
:func:`load_cellseg_config` only, never by detectron2's ``merge_from_file`` (which defaults to
``allow_unsafe=True``: a YAML tag in a downloaded config could run a command).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from detectron2.config import CfgNode as CN

from cellseg_d2.config.defaults import add_cellseg_config, default_cells_root, get_cellseg_cfg
from cellseg_d2.errors import ConfigError

__all__ = [
    "ConfigError",
    "add_cellseg_config",
    "config_file_keys",
    "default_cells_root",
    "get_cellseg_cfg",
    "load_cellseg_config",
    "lookup_key",
    "merge_config_file",
    "merge_config_overrides",
]

#: Keys only the person running a command may set (as a ``KEY VALUE`` override): a config file
#: from elsewhere must not be able to grant trust (it may hold the default, as saved configs do).
COMMAND_LINE_ONLY_KEYS: tuple[str, ...] = ("MODEL.CELLSEG.TRUST_PICKLE",)


def load_cellseg_config(config_file: str | os.PathLike, opts: Sequence[Any] = ()) -> CN:
    """The project config: defaults, then ``config_file`` (safely), then ``KEY VALUE`` overrides.

    This is the one way the tools read a config. Unlike detectron2's ``merge_from_file`` it never
    runs code from the file and never fetches a ``_BASE_`` from the network, and every problem is
    a :class:`ConfigError` naming the file (and line) or the key, which the tools turn into exit
    status 2. The result is not frozen, so callers can still adapt it.

    Args:
        config_file: a local YAML file.
        opts: flat ``[KEY, VALUE, KEY, VALUE, ...]`` overrides, as given on the command line.

    Returns:
        The merged config.

    Raises:
        ConfigError: see :func:`merge_config_file` and :func:`merge_config_overrides`.
    """
    cfg = get_cellseg_cfg()
    merge_config_file(cfg, config_file)
    merge_config_overrides(cfg, opts)
    return cfg


def config_file_keys(config_file: str | os.PathLike) -> frozenset[str]:
    """The dotted keys a config file (with its ``_BASE_`` chain) sets explicitly.

    Why: some defaults are filled from the dataset (class names from ``dataset.json``) only when
    no config file or override chose a value; a merged config cannot tell a default from a
    chosen value equal to it.

    Raises:
        ConfigError: as :func:`merge_config_file`.
    """
    return frozenset(_leaf_keys(_read_config_tree(Path(config_file), ())))


def merge_config_file(cfg: CN, config_file: str | os.PathLike) -> None:
    """Merge a YAML config file and its ``_BASE_`` chain into ``cfg`` in place.

    Rules: plain YAML only (``yaml.safe_load``; tags such as ``!!python/object/apply`` are
    refused); ``_BASE_`` is one local path or a list of them, relative to the file that names it
    (or absolute, ``~`` allowed), never a URL; a file may not include itself through its bases;
    later bases override earlier ones and the file overrides its bases. A file without
    ``VERSION`` is read as the current version (detectron2 would guess and upgrade old ones).

    Raises:
        ConfigError: a missing or unreadable file, malformed YAML (with the line), an unsafe tag,
            a refused or circular ``_BASE_``, an unknown key, a value of the wrong type, a wrong
            ``VERSION`` or a command-line-only key, naming the file and the key.
    """
    path = Path(config_file)
    data = _read_config_tree(path, ())
    for key in COMMAND_LINE_ONLY_KEYS:
        # The default (no trust) may be written out, as every saved config.yaml does; only a
        # file that tries to grant what the key grants is refused.
        value = lookup_key(data, key)
        if value is not _MISSING and value != lookup_key(cfg, key):
            raise ConfigError(
                f"{path}: {key} cannot be set in a config file; pass it on the command line "
                f"({key} True) if you mean it"
            )
    version = data.get("VERSION", cfg.VERSION)
    if version != cfg.VERSION:
        raise ConfigError(f"{path}: VERSION {version} is not supported (expected {cfg.VERSION})")
    keys = [key for key in _leaf_keys(data) if key != "VERSION"]
    before = {key: lookup_key(cfg, key) for key in keys}
    try:
        cfg.merge_from_other_cfg(type(cfg)(data))
    except (KeyError, ValueError, AssertionError, TypeError) as exc:
        raise ConfigError(f"{path}: {_reason(exc)}") from exc
    _check_list_items(cfg, before, str(path))


def merge_config_overrides(cfg: CN, opts: Sequence[Any]) -> None:
    """Merge command-line ``KEY VALUE`` pairs into ``cfg`` in place.

    Values are parsed as Python literals (``ast.literal_eval``, which evaluates no code) and must
    have the type of the default they replace (for a list of numbers or of strings, also each
    item).

    Raises:
        ConfigError: an odd number of items, an unknown key or a value of the wrong type, naming
            the key.
    """
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(
            f"config overrides must be KEY VALUE pairs, got {len(opts)} items: "
            f"'{opts[-1]}' has no value"
        )
    before = {str(key): lookup_key(cfg, str(key)) for key in opts[0::2]}
    try:
        cfg.merge_from_list(_ints_as_floats(opts, before))
    except (KeyError, ValueError, AssertionError, TypeError) as exc:
        raise ConfigError(f"command-line override: {_reason(exc)}") from exc
    _check_list_items(cfg, before, "command-line override")


def _ints_as_floats(opts: list[Any], before: dict[str, Any]) -> list[Any]:
    """``KEY 30`` for a float key means 30.0 (``SOLVER.TIME_BUDGET_MINUTES 30``): detectron2's
    merge would refuse the int although no value is lost; every other type stays strict."""
    widened = list(opts)
    for i in range(1, len(widened), 2):
        if not isinstance(before.get(str(widened[i - 1])), float):
            continue
        value = widened[i]
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                continue
        if isinstance(value, int) and not isinstance(value, bool):
            widened[i] = float(value)
    return widened


def _check_list_items(cfg: CN, before: dict[str, Any], where: str) -> None:
    """Refuse a list whose items are not of the kind the replaced list held.

    detectron2's merge checks only the outer type, so ``MODEL.PIXEL_MEAN ["a", "b", "c"]`` would
    pass and fail later with a traceback deep in the model.

    Args:
        cfg: the config after the merge.
        before: each merged key with its value before the merge (``_MISSING`` if none).
        where: the file or "command-line override", for the message.
    """
    for key, old in before.items():
        kind = _item_kind(old)
        new = lookup_key(cfg, key)
        if kind is None or not isinstance(new, (list, tuple)):
            continue
        for item in _leaves(new):
            if _item_kind([item]) != kind:
                raise ConfigError(
                    f"{where}: {key} must be a list of {kind}s (like {list(old)!r}), but its "
                    f"item {item!r} is not a {kind}"
                )


_MISSING = object()


def lookup_key(cfg: dict, dotted: str) -> Any:
    """The value at ``"A.B"`` in a config or a parsed YAML tree, or the module's missing marker.

    Why public: the config builder reads keys by their dotted names too (one walker).
    """
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _leaf_keys(data: dict, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            keys += _leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def _item_kind(value: Any) -> str | None:
    """ "number" or "string" for a non-empty (nested) list of only those; else None."""
    if not isinstance(value, (list, tuple)):
        return None
    leaves = _leaves(value)
    if leaves and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in leaves):
        return "number"
    if leaves and all(isinstance(x, str) for x in leaves):
        return "string"
    return None


def _reason(exc: BaseException) -> str:
    # KeyError's str() adds quotes around its message.
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def _read_config_tree(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """One YAML file with its ``_BASE_`` files merged in; ``chain`` holds the including files."""
    where = f" (the _BASE_ of {chain[-1]})" if chain else ""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found{where}")
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(resolved) :], resolved))
        raise ConfigError(f"{path}: circular _BASE_: {cycle}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasSafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = f", line {exc.problem_mark.line + 1}" if exc.problem_mark else ""
        problem = exc.problem or exc.context or "malformed YAML"
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
            problem += " (config files may hold plain values only; Python tags are refused)"
        raise ConfigError(f"{path}{line}: {problem}") from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: unreadable config file: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of KEY: value")
    bases = data.pop("_BASE_", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _BASE_ must be a file path or a list of file paths")
    merged: dict[str, Any] = {}
    for base in bases:
        if "://" in base:
            raise ConfigError(
                f"{path}: _BASE_ '{base}' is a URL; a _BASE_ must be a local file (relative to "
                f"{path.parent} or absolute): download it, check it and name the copy"
            )
        base_path = Path(base).expanduser()
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        _merge_into(_read_config_tree(base_path, (*chain, resolved)), merged, path, "")
    _merge_into(data, merged, path, "")
    return merged


class _NoAliasSafeLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without aliases (``*name``).

    NOTE: aliases let a few hundred bytes stand for an exponentially large tree ("billion
    laughs"); loading shares the nodes, but merging and checking the config walk every copy and
    hang. No config needs them, so the first alias is refused with its line.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        """Compose as PyYAML does, refusing an alias."""
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"found the alias *{event.anchor}: YAML aliases and anchors are refused in config "
                "files (write the value out)",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def _merge_into(src: dict, dst: dict, path: Path, prefix: str) -> None:
    """Merge ``src`` into ``dst`` recursively; values in ``src`` win."""
    for key, value in src.items():
        if isinstance(value, dict) and key in dst:
            if not isinstance(dst[key], dict):
                raise ConfigError(
                    f"{path}: {prefix}{key} is a section here but a value in a _BASE_ file"
                )
            _merge_into(value, dst[key], path, f"{prefix}{key}.")
        else:
            dst[key] = value
