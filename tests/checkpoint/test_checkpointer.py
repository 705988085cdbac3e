"""Weights that cannot run code or leave the model random, https-only downloads, stale temp
files, used or unusable OUTPUT_DIRs."""

from __future__ import annotations

import logging
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from cellseg_d2.checkpoint import checkpointer as checkpoint_module
from cellseg_d2.checkpoint.checkpointer import (
    AtomicDetectionCheckpointer,
    WeightsMismatchError,
    WeightsUnavailableError,
    check_output_dir,
    fetch_weights,
    weights_cache_dir,
)
from cellseg_d2.config import load_cellseg_config
from cellseg_d2.errors import ConfigError
from tests.conftest import INSTANT_CONFIG, REPO_ROOT, load_tool

TOOLS = REPO_ROOT / "tools"


class Payload:
    """Unpickling this creates ``marker`` (a folder): proof that code in the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))


def _payload_weights(tmp_path: Path, suffix: str) -> tuple[Path, Path]:
    marker = tmp_path / f"pickle_payload_ran{suffix}"
    path = tmp_path / f"evil{suffix}"
    data = {"model": {"weight": torch.zeros(2, 2)}, "extra": Payload(marker)}
    if suffix == ".pkl":
        path.write_bytes(pickle.dumps(data))
    else:
        torch.save(data, path)
    return path, marker


def test_the_payload_is_real(tmp_path: Path) -> None:
    # The control: a plain unpickling runs it.
    path, marker = _payload_weights(tmp_path, ".pkl")
    pickle.loads(path.read_bytes())
    assert marker.is_dir()


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_payload_weights_are_refused_and_do_not_run(tmp_path: Path, suffix: str) -> None:
    path, marker = _payload_weights(tmp_path, suffix)
    checkpointer = AtomicDetectionCheckpointer(torch.nn.Linear(2, 2))
    with pytest.raises(WeightsUnavailableError) as info:
        checkpointer.load(str(path))
    message = str(info.value)
    assert str(path) in message and "MODEL.CELLSEG.TRUST_PICKLE True" in message
    assert not marker.exists()


def test_predict_tool_exits_2_on_payload_weights(dataset, tmp_path: Path, capsys) -> None:
    root, _, _ = dataset
    path, marker = _payload_weights(tmp_path, ".pth")
    output = tmp_path / "submission.json"
    output.write_text("[]")  # an earlier submission, kept
    tool = load_tool(TOOLS / "predict.py")
    argv = ["--config-file", str(INSTANT_CONFIG), "--input", str(root / "test_release")]
    argv += ["--id-map", str(root / "test_image_name_to_ids.json"), "--output", str(output)]
    argv += ["--no-progress", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(path)]
    assert tool.main(tool.parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err and "UnpicklingError" not in err
    assert not marker.exists()
    assert output.read_text() == "[]"


def _zoo_style_pkl(tmp_path: Path, model: torch.nn.Module) -> Path:
    """Weights in detectron2's pickled model-zoo format (numpy arrays, ``__author__``)."""
    path = tmp_path / "weights.pkl"
    state = {k: v.numpy() + 1.0 for k, v in model.state_dict().items()}
    path.write_bytes(pickle.dumps({"model": state, "__author__": "test"}))
    return path


def test_pkl_loads_with_the_opt_in_or_from_the_zoo(tmp_path: Path, monkeypatch) -> None:
    model = torch.nn.Linear(2, 2)
    expected = model.weight.detach().numpy() + 1.0
    path = _zoo_style_pkl(tmp_path, model)
    with pytest.raises(WeightsUnavailableError, match="weights.pkl"):
        AtomicDetectionCheckpointer(model).load(str(path))
    AtomicDetectionCheckpointer(model, trust_pickle=True).load(str(path))
    assert np.allclose(model.weight.detach().numpy(), expected)

    # A detectron2:// name is trusted without the opt-in (served here from a local copy).
    fresh = torch.nn.Linear(2, 2)
    monkeypatch.setattr(checkpoint_module, "fetch_weights", lambda weights: str(path))
    AtomicDetectionCheckpointer(fresh).load("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    assert np.allclose(fresh.weight.detach().numpy(), expected)


def test_own_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    AtomicDetectionCheckpointer(model, str(tmp_path), optimizer=optimizer).save("model_0000004")
    fresh = torch.nn.Linear(2, 2)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    loader = AtomicDetectionCheckpointer(fresh, str(tmp_path), optimizer=fresh_opt)
    loader.resume_or_load("", resume=True)
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_opt.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/R-50.pth", "ftp://127.0.0.1/R-50.pth", "file:///tmp/R-50.pth"]
)
def test_only_https_downloads(url: str) -> None:
    with pytest.raises(WeightsUnavailableError, match="only over https://") as info:
        fetch_weights(url)
    assert url in str(info.value)


def test_downloads_go_to_a_private_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache = tmp_path / "xdg" / "cellseg_d2"
    cache.mkdir(parents=True)
    cache.chmod(0o777)  # made private again
    with pytest.raises(WeightsUnavailableError, match="127.0.0.1:9/R-50.pth"):
        fetch_weights("https://127.0.0.1:9/R-50.pth")  # nothing listens on port 9
    assert weights_cache_dir() == cache
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700


def test_stale_temp_files_removed_at_start(tmp_path: Path, caplog) -> None:
    stale = [
        tmp_path / ".model_0000009.pth.k2j4h5g6.tmp",
        tmp_path / ".last_checkpoint.abc_1234.tmp",
    ]
    kept = [tmp_path / "model_0000004.pth", tmp_path / ".metrics.json.abcd1234.tmp"]
    for path in stale + kept:
        path.write_bytes(b"x" * 10)
    # The tools' setup_logger stops "cellseg_d2" from propagating: listen on the logger itself.
    log = logging.getLogger("cellseg_d2.checkpoint.checkpointer")
    log.addHandler(caplog.handler)
    try:
        AtomicDetectionCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))
    finally:
        log.removeHandler(caplog.handler)
    assert not any(path.exists() for path in stale)
    assert all(path.read_bytes() == b"x" * 10 for path in kept)
    assert all(str(path) in caplog.text for path in stale)
    AtomicDetectionCheckpointer(torch.nn.Linear(2, 2), str(tmp_path), save_to_disk=False)


def test_output_dir_with_checkpoints_needs_resume_or_overwrite(tmp_path: Path) -> None:
    check_output_dir(str(tmp_path), resume=False, overwrite=False)  # empty: fine
    (tmp_path / "model_0000009.pth").write_bytes(b"old")
    with pytest.raises(ConfigError, match="--resume") as info:
        check_output_dir(str(tmp_path), resume=False, overwrite=False)
    assert str(tmp_path) in str(info.value) and "--overwrite" in str(info.value)
    check_output_dir(str(tmp_path), resume=True, overwrite=False)
    check_output_dir(str(tmp_path), resume=False, overwrite=True)


def test_train_tool_refuses_a_used_output_dir(synthetic_root: Path, tmp_path: Path, capsys) -> None:
    tool = load_tool(TOOLS / "train_net.py")
    out = tmp_path / "run"
    common = ["--config-file", str(INSTANT_CONFIG)]
    opts = ["MODEL.DEVICE", "cpu", "DATASETS.CELLS_ROOT", str(synthetic_root)]
    opts += ["DATASETS.VAL_FRACTION", "0.25", "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "1"]
    opts += ["OUTPUT_DIR", str(out)]
    out.mkdir()
    (out / "last_checkpoint").write_text("model_0000009.pth")
    (out / "model_0000009.pth").write_bytes(b"an earlier run")

    assert tool.run(tool.parse_args([*common, *opts])) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--resume" in err and "--overwrite" in err
    assert (out / "model_0000009.pth").read_bytes() == b"an earlier run"
    assert (out / "last_checkpoint").read_text() == "model_0000009.pth"

    assert tool.run(tool.parse_args([*common, "--overwrite", *opts])) == 0
    assert (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    final = (out / "model_final.pth").read_bytes()
    assert tool.run(tool.parse_args([*common, "--resume", *opts])) == 0  # nothing left to train
    assert (out / "model_final.pth").read_bytes() == final


def test_output_dir_that_is_a_file_exits_2(synthetic_root: Path, tmp_path: Path, capsys) -> None:
    tool = load_tool(TOOLS / "train_net.py")
    taken = tmp_path / "run.txt"
    taken.write_text("notes")
    for output_dir, eval_only in ((taken, False), (taken / "sub", False), (taken, True)):
        argv = ["--config-file", str(INSTANT_CONFIG), *(["--eval-only"] if eval_only else [])]
        argv += ["MODEL.DEVICE", "cpu", "DATASETS.CELLS_ROOT", str(synthetic_root)]
        assert tool.run(tool.parse_args([*argv, "OUTPUT_DIR", str(output_dir)])) == 2
        err = capsys.readouterr().err
        assert str(output_dir) in err and "is a file" in err and "Traceback" not in err
    assert taken.read_text() == "notes"


STEM = "backbone.bottom_up.stem.conv1.weight"


def _misfit_weights(tmp_path: Path, kind: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """The instant model's weights with no key in common with it, or with a one-channel stem."""
    state = build_model(load_cellseg_config(INSTANT_CONFIG, ["MODEL.DEVICE", "cpu"])).state_dict()
    state = {key: value + 1.0 for key, value in state.items()}  # unlike a fresh model
    if kind == "foreign":
        state = {f"other_net.{key}": value for key, value in state.items()}
    else:
        state[STEM] = state[STEM][:, :1].clone()
    path = tmp_path / f"{kind}.pth"
    torch.save({"model": state}, path)
    return path, state


def test_misfit_weights_are_an_error_where_the_model_is_used_as_it_is(tmp_path: Path) -> None:
    model = build_model(load_cellseg_config(INSTANT_CONFIG, ["MODEL.DEVICE", "cpu"]))
    total = len(model.state_dict())
    path, _ = _misfit_weights(tmp_path, "foreign")
    with pytest.raises(WeightsMismatchError) as info:
        AtomicDetectionCheckpointer(model).load(str(path))
    assert str(path) in str(info.value)
    assert f"{total} of {total} model tensors not found in it, 0 with another shape" in str(
        info.value
    )
    path, _ = _misfit_weights(tmp_path, "stem")
    with pytest.raises(WeightsMismatchError) as info:
        AtomicDetectionCheckpointer(model, strict_fit=True).load(str(path))
    message = str(info.value)
    assert str(path) in message and f"0 of {total} model tensors not found in it, 1 with" in message
    assert STEM in message and "(64, 1, 7, 7)" in message and "(64, 3, 7, 7)" in message


def test_misfit_weights_only_warn_when_training_starts(tmp_path: Path, caplog) -> None:
    model = build_model(load_cellseg_config(INSTANT_CONFIG, ["MODEL.DEVICE", "cpu"]))
    total, fresh_stem = len(model.state_dict()), model.state_dict()[STEM].clone()
    path, state = _misfit_weights(tmp_path, "stem")
    log = logging.getLogger("cellseg_d2.checkpoint.checkpointer")
    log.addHandler(caplog.handler)
    try:
        AtomicDetectionCheckpointer(model, strict_fit=False).load(str(path))
    finally:
        log.removeHandler(caplog.handler)
    assert f"0 of {total} model tensors not found in it, 1 with another shape" in caplog.text
    assert str(path) in caplog.text and STEM in caplog.text
    loaded = model.state_dict()
    assert torch.equal(loaded[STEM], fresh_stem)  # kept its initialisation
    assert all(torch.equal(loaded[key], state[key]) for key in loaded if key != STEM)


def _predict_argv(root: Path, output: Path, weights: Path) -> list[str]:
    argv = ["--config-file", str(INSTANT_CONFIG), "--input", str(root / "test_release")]
    argv += ["--id-map", str(root / "test_image_name_to_ids.json"), "--output", str(output)]
    return [*argv, "--no-progress", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(weights)]


def test_predict_and_eval_only_exit_2_on_misfit_weights(
    dataset, synthetic_root: Path, tmp_path: Path, capsys
) -> None:
    root, _, _ = dataset
    stem, _ = _misfit_weights(tmp_path, "stem")
    output = tmp_path / "submission.json"
    output.write_text("[]")  # an earlier submission, kept
    predict = load_tool(TOOLS / "predict.py")
    assert predict.main(predict.parse_args(_predict_argv(root, output, stem))) == 2
    err = capsys.readouterr().err
    assert str(stem) in err and "1 with another shape" in err and "Traceback" not in err
    assert output.read_text() == "[]"

    foreign, _ = _misfit_weights(tmp_path, "foreign")
    train_net = load_tool(TOOLS / "train_net.py")
    argv = ["--config-file", str(INSTANT_CONFIG), "--eval-only", "MODEL.DEVICE", "cpu"]
    argv += ["DATASETS.CELLS_ROOT", str(synthetic_root), "DATASETS.VAL_FRACTION", "0.25"]
    argv += ["MODEL.WEIGHTS", str(foreign), "OUTPUT_DIR", str(tmp_path / "eval")]
    assert train_net.run(train_net.parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert str(foreign) in err and "model tensors not found in it" in err
    assert not (tmp_path / "eval" / "inference").exists()


def test_training_from_misfit_weights_warns_and_trains(synthetic_root: Path, tmp_path: Path):
    foreign, _ = _misfit_weights(tmp_path, "foreign")
    tool = load_tool(TOOLS / "train_net.py")
    out = tmp_path / "run"
    argv = ["--config-file", str(INSTANT_CONFIG), "MODEL.DEVICE", "cpu"]
    argv += ["DATASETS.CELLS_ROOT", str(synthetic_root), "DATASETS.VAL_FRACTION", "0.25"]
    argv += ["SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "1", "MODEL.WEIGHTS", str(foreign)]
    assert tool.run(tool.parse_args([*argv, "OUTPUT_DIR", str(out)])) == 0
    log = (out / "log.txt").read_text()
    assert f"MODEL.WEIGHTS '{foreign}' fits the model only partly" in log
    assert "model tensors not found in it" in log
    assert (out / "model_final.pth").is_file()
