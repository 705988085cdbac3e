"""The project config loader: safe YAML, local ``_BASE_`` only, errors that name file or key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cellseg_d2.config import get_cellseg_cfg, load_cellseg_config
from cellseg_d2.errors import CellSegError, ConfigError
from tests.conftest import CONFIGS, INSTANT_CONFIG, REPO_ROOT, load_tool

TOOLS = REPO_ROOT / "tools"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _payload_config(tmp_path: Path) -> tuple[Path, Path]:
    """A config whose YAML tag would create ``marker`` if it were loaded unsafely."""
    marker = tmp_path / "yaml_payload_ran"
    config = _write(
        tmp_path / "evil.yaml",
        f'_BASE_: "{INSTANT_CONFIG}"\nMODEL:\n'
        f'  DEVICE: !!python/object/apply:os.system ["touch {marker}"]\n',
    )
    return config, marker


def test_detectron2_merge_from_file_would_run_the_payload(tmp_path: Path) -> None:
    # The control: the payload is real, detectron2's default loader runs it.
    config, marker = _payload_config(tmp_path)
    with pytest.raises(Exception):  # noqa: B017 (os.system returns an int, not a str)
        get_cellseg_cfg().merge_from_file(str(config))
    assert marker.exists()


def test_unsafe_yaml_tag_is_refused_and_does_not_run(tmp_path: Path) -> None:
    config, marker = _payload_config(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_cellseg_config(config)
    message = str(info.value)
    assert str(config) in message and "line 3" in message and "python/object/apply" in message
    assert not marker.exists()


def test_train_tool_exits_2_on_unsafe_config_and_keeps_earlier_output(
    tmp_path: Path, capsys
) -> None:
    config, marker = _payload_config(tmp_path)
    earlier = _write(tmp_path / "out" / "metrics.json", '{"iteration": 7}')
    tool = load_tool(TOOLS / "train_net.py")
    args = tool.parse_args(["--config-file", str(config), "OUTPUT_DIR", str(earlier.parent)])
    assert tool.run(args) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "Traceback" not in err
    assert not marker.exists()
    assert earlier.read_text() == '{"iteration": 7}'


@pytest.mark.parametrize(
    ("text", "opts", "expected"),
    [
        ("MODEL:\n  DEVICE: [cpu\n", [], "line 3"),  # malformed YAML: unclosed list
        ("MODEL:\n  NO_SUCH_KEY: 1\n", [], "MODEL.NO_SUCH_KEY"),
        ("SOLVER:\n  MAX_ITER: many\n", [], "SOLVER.MAX_ITER"),
        ("SOLVER:\n  MAX_ITER: 5\n", ["SOLVER.NO_SUCH_KEY", "1"], "SOLVER.NO_SUCH_KEY"),
        ("SOLVER:\n  MAX_ITER: 5\n", ["SOLVER.MAX_ITER", "'x'"], "SOLVER.MAX_ITER"),
        ("SOLVER:\n  MAX_ITER: 5\n", ["SOLVER.MAX_ITER", "3", "SOLVER.BASE_LR"], "SOLVER.BASE_LR"),
        ("- a list\n", [], "mapping"),
        ("VERSION: 1\n", [], "VERSION 1"),
    ],
)
def test_config_errors_name_the_file_or_key(
    tmp_path: Path, text: str, opts: list[str], expected: str
) -> None:
    config = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_cellseg_config(config, opts)
    assert str(config) in str(info.value) or opts


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_cellseg_config(missing)
    child = _write(tmp_path / "child.yaml", "_BASE_: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"gone.yaml: config file not found \(the _BASE_ of"):
        load_cellseg_config(child)


@pytest.mark.parametrize(
    "base",
    [
        "https://example.com/Base.yaml",
        "http://127.0.0.1:9/Base.yaml",
        "detectron2://Base-RCNN-FPN.yaml",
        "file:///etc/Base.yaml",
    ],
)
def test_base_url_is_refused(tmp_path: Path, base: str) -> None:
    config = _write(tmp_path / "c.yaml", f'_BASE_: "{base}"\n')
    with pytest.raises(ConfigError, match="is a URL") as info:
        load_cellseg_config(config)
    assert base in str(info.value) and str(config) in str(info.value)


def test_base_is_relative_to_the_including_file_and_may_be_absolute(
    tmp_path: Path, monkeypatch
) -> None:
    _write(tmp_path / "configs" / "base.yaml", "SOLVER:\n  MAX_ITER: 11\n  BASE_LR: 0.5\n")
    _write(tmp_path / "configs" / "sub" / "mid.yaml", '_BASE_: "../base.yaml"\n')
    leaf = _write(
        tmp_path / "configs" / "sub" / "leaf.yaml",
        f'_BASE_: ["mid.yaml", "{INSTANT_CONFIG}"]\nSOLVER:\n  MAX_ITER: 13\n',
    )
    monkeypatch.chdir(tmp_path)  # not the folder of any config
    cfg = load_cellseg_config(leaf, ["SOLVER.WARMUP_ITERS", "2"])
    assert cfg.SOLVER.MAX_ITER == 13  # the file beats its bases
    assert cfg.SOLVER.BASE_LR == 0.0005  # the later base beats the earlier one
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.SOLVER.WARMUP_ITERS == 2


def test_circular_base_is_detected(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    _write(tmp_path / "b.yaml", "_BASE_: ./a.yaml\n")
    with pytest.raises(ConfigError, match="circular _BASE_") as info:
        load_cellseg_config(tmp_path / "a.yaml")
    assert str(tmp_path / "a.yaml") in str(info.value)


def test_trust_pickle_only_from_the_command_line(tmp_path: Path) -> None:
    config = _write(tmp_path / "c.yaml", "MODEL:\n  CELLSEG:\n    TRUST_PICKLE: True\n")
    with pytest.raises(ConfigError, match="MODEL.CELLSEG.TRUST_PICKLE cannot be set in a config"):
        load_cellseg_config(config)
    cfg = load_cellseg_config(INSTANT_CONFIG, ["MODEL.CELLSEG.TRUST_PICKLE", "True"])
    assert cfg.MODEL.CELLSEG.TRUST_PICKLE is True
    # the default, as every saved config.yaml writes it, grants nothing and is accepted
    saved = _write(tmp_path / "saved.yaml", "MODEL:\n  CELLSEG:\n    TRUST_PICKLE: false\n")
    assert load_cellseg_config(saved).MODEL.CELLSEG.TRUST_PICKLE is False
    assert get_cellseg_cfg().MODEL.CELLSEG.TRUST_PICKLE is False


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_as_detectron2_loads_them(path: Path) -> None:
    reference = get_cellseg_cfg()
    reference.merge_from_file(str(path))
    assert load_cellseg_config(path) == reference


def test_error_types_share_the_base_the_tools_catch() -> None:
    from cellseg_d2.checkpoint import WeightsUnavailableError
    from cellseg_d2.errors import CellDataError

    for error in (ConfigError, CellDataError, WeightsUnavailableError):
        assert issubclass(error, CellSegError)
    assert issubclass(CellDataError, ValueError)  # earlier callers catch ValueError


def _bad_override_exit(tool_name: str, argv: list[str], capsys) -> str:
    tool = load_tool(TOOLS / tool_name)
    if tool_name == "visualize.py":
        code = tool.main(argv)
    elif tool_name == "train_net.py":
        code = tool.run(tool.parse_args(argv))
    else:
        code = tool.main(tool.parse_args(argv))
    assert code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "tool_name", ["train_net.py", "predict.py", "visualize.py", "benchmark.py"]
)
def test_every_config_tool_exits_2_naming_the_key(tool_name: str, tmp_path: Path, capsys) -> None:
    earlier = _write(tmp_path / "out.json", "[]")
    extra = {
        "train_net.py": [],
        "predict.py": ["--input", str(tmp_path), "--id-map", "m.json", "--output", str(earlier)],
        "visualize.py": ["--input", str(tmp_path), "--id-map", "m.json", "--output", "o.png"],
        "benchmark.py": ["--data", str(tmp_path), "--json", str(earlier)],
    }[tool_name]
    if tool_name == "visualize.py":  # visualize reads the id map before predicting
        _write(tmp_path / "m.json", "[]")
        extra[extra.index("m.json")] = str(tmp_path / "m.json")
    argv = ["--config-file", str(INSTANT_CONFIG), *extra, "MODEL.NO_SUCH_KEY", "1"]
    err = _bad_override_exit(tool_name, argv, capsys)
    assert "MODEL.NO_SUCH_KEY" in err and "Traceback" not in err
    assert earlier.read_text() == "[]"


def _alias_bomb(tmp_path: Path) -> Path:
    """A "billion laughs" config: nine levels of nine aliases, 9**9 numbers once expanded."""
    levels = ["&l0 [" + ", ".join(["1.0"] * 9) + "]"]
    levels += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return _write(
        tmp_path / "bomb.yaml",
        f'_BASE_: "{INSTANT_CONFIG}"\nMODEL:\n  PIXEL_MEAN: [{", ".join(levels)}]\n',
    )


def test_yaml_alias_bomb_is_refused_naming_the_file(tmp_path: Path, capsys) -> None:
    bomb = _alias_bomb(tmp_path)
    assert bomb.stat().st_size < 1000
    with pytest.raises(ConfigError, match="alias") as info:
        load_cellseg_config(bomb)
    assert str(bomb) in str(info.value) and "line 3" in str(info.value)
    earlier = _write(tmp_path / "out" / "metrics.json", '{"iteration": 7}')
    argv = ["--config-file", str(bomb), "OUTPUT_DIR", str(earlier.parent)]
    err = _bad_override_exit("train_net.py", argv, capsys)
    assert str(bomb) in err and "alias" in err and "Traceback" not in err
    assert earlier.read_text() == '{"iteration": 7}'


def test_anchors_without_aliases_still_load(tmp_path: Path) -> None:
    config = _write(tmp_path / "c.yaml", "SOLVER:\n  MAX_ITER: &n 7\n")
    assert load_cellseg_config(config).SOLVER.MAX_ITER == 7


@pytest.mark.parametrize(
    ("text", "opts", "key", "item"),
    [
        ("", ["MODEL.PIXEL_MEAN", '["a","b","c"]'], "MODEL.PIXEL_MEAN", "'a'"),
        ('MODEL:\n  PIXEL_MEAN: ["a", "b", "c"]\n', [], "MODEL.PIXEL_MEAN", "'a'"),
        ("", ["MODEL.PIXEL_STD", "[1.0, True, 1.0]"], "MODEL.PIXEL_STD", "True"),
        ("MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: [[8], [x]]\n", [], "SIZES", "'x'"),
        ("", ["DATASETS.CLASS_NAMES", "['tumour', 2]"], "DATASETS.CLASS_NAMES", "2"),
    ],
)
def test_list_items_of_the_wrong_type_name_the_key(
    tmp_path: Path, text: str, opts: list[str], key: str, item: str
) -> None:
    config = _write(tmp_path / "c.yaml", f'_BASE_: "{INSTANT_CONFIG}"\n{text}')
    with pytest.raises(ConfigError, match=re.escape(key)) as info:
        load_cellseg_config(config, opts)
    message = str(info.value)
    assert f"item {item} is not a" in message
    assert (str(config) in message) != bool(opts)  # the file, or "command-line override"
    ok = load_cellseg_config(INSTANT_CONFIG, ["MODEL.PIXEL_MEAN", "[1, 2.5, 3]"])
    assert list(ok.MODEL.PIXEL_MEAN) == [1, 2.5, 3]


def test_predict_tool_exits_2_on_a_pixel_mean_of_strings(tmp_path: Path, capsys) -> None:
    earlier = _write(tmp_path / "out.json", "[]")
    argv = ["--config-file", str(INSTANT_CONFIG), "--input", str(tmp_path), "--id-map", "m.json"]
    argv += ["--output", str(earlier), "MODEL.PIXEL_MEAN", '["a","b","c"]']
    err = _bad_override_exit("predict.py", argv, capsys)
    assert "MODEL.PIXEL_MEAN" in err and "Traceback" not in err
    assert earlier.read_text() == "[]"


def test_a_whole_number_for_a_float_key_is_that_float() -> None:
    """``SOLVER.TIME_BUDGET_MINUTES 30`` as typed: no value is lost, so it is accepted; other
    mismatches (a float for an int key, a string for a float key) stay refused."""
    cfg = load_cellseg_config(
        INSTANT_CONFIG, ["SOLVER.TIME_BUDGET_MINUTES", "30", "INPUT.PIXEL_SIZE", 1]
    )
    assert cfg.SOLVER.TIME_BUDGET_MINUTES == 30.0 and isinstance(cfg.INPUT.PIXEL_SIZE, float)
    for opts in (["SOLVER.MAX_ITER", "2.5"], ["INPUT.PIXEL_SIZE", "'a'"], ["INPUT.SCALE", "True"]):
        with pytest.raises(ConfigError, match=opts[0]):
            load_cellseg_config(INSTANT_CONFIG, opts)
