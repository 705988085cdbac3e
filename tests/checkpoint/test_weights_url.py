"""MODEL.WEIGHTS names checked before any library sees them; downloads only into the cache."""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import BinaryIO

import pytest
import torch

from cellseg_d2.checkpoint import weights_url
from cellseg_d2.checkpoint.checkpointer import AtomicDetectionCheckpointer
from cellseg_d2.checkpoint.weights_url import (
    WeightsUnavailableError,
    fetch_weights,
    resolve_weights,
    zoo_names,
)
from tests.conftest import CONFIGS, INSTANT_CONFIG, REPO_ROOT, load_tool

ZOO_TRAVERSAL = "detectron2://" + "../" * 9 + "proc/self/cwd/model.pkl"


class Payload:
    """Unpickling this creates ``marker`` (a folder): proof that code in the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))


def _payload_pickle(marker: Path) -> bytes:
    return pickle.dumps({"model": {"weight": torch.zeros(2, 2)}, "extra": Payload(marker)})


class FakeNetwork:
    """Stands in for :func:`weights_url.download`: serves fixed bytes and records the URLs."""

    def __init__(self, body: bytes, fail_after: int | None = None) -> None:
        self.body, self.fail_after, self.urls = body, fail_after, []

    def __call__(self, url: str, handle: BinaryIO) -> None:
        self.urls.append(url)
        if self.fail_after is not None:
            handle.write(self.body[: self.fail_after])
            raise OSError("connection reset")
        handle.write(self.body)


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME whose cache is the only place downloads may go."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return home


def _files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if not path.is_dir()}


def test_iopath_alone_would_resolve_the_zoo_traversal_to_a_local_file(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control: handed to detectron2's path handler, the name reaches ./model.pkl.
    from detectron2.utils.file_io import PathManager

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pkl").write_bytes(b"local")
    assert os.path.samefile(PathManager.get_local_path(ZOO_TRAVERSAL), tmp_path / "model.pkl")


def test_zoo_traversal_to_a_local_pickle_is_refused(tmp_path: Path, home: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "payload_ran"
    (tmp_path / "model.pkl").write_bytes(_payload_pickle(marker))
    network = FakeNetwork(b"")
    monkeypatch.setattr(weights_url, "download", network)
    with pytest.raises(WeightsUnavailableError) as info:
        AtomicDetectionCheckpointer(torch.nn.Linear(2, 2)).load(ZOO_TRAVERSAL)
    assert ZOO_TRAVERSAL in str(info.value) and "'..'" in str(info.value)
    assert not marker.exists() and network.urls == []


def test_predict_tool_exits_2_on_the_zoo_traversal(
    dataset, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    root, _, _ = dataset
    monkeypatch.chdir(tmp_path)  # what /proc/self/cwd points at
    marker = tmp_path / "payload_ran"
    (tmp_path / "model.pkl").write_bytes(_payload_pickle(marker))
    output = tmp_path / "submission.json"
    output.write_text("[]")  # an earlier submission, kept
    tool = load_tool(REPO_ROOT / "tools" / "predict.py")
    argv = ["--config-file", str(INSTANT_CONFIG), "--input", str(root / "test_release")]
    argv += ["--id-map", str(root / "test_image_name_to_ids.json"), "--output", str(output)]
    argv += ["--no-progress", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ZOO_TRAVERSAL]
    assert tool.main(tool.parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert ZOO_TRAVERSAL in err and "Traceback" not in err
    assert not marker.exists()
    assert output.read_text() == "[]"


def test_https_traversal_writes_nothing_outside_the_cache(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "venv" / "lib" / "python3" / "site-packages"
    site.mkdir(parents=True)
    url = "https://example.org/" + "../" * 12 + str(site).lstrip("/") + "/zz.pth"
    network = FakeNetwork(b"import os; os.mkdir('pth_payload_ran')\n")
    monkeypatch.setattr(weights_url, "download", network)
    before = _files_under(tmp_path)
    with pytest.raises(WeightsUnavailableError) as info:
        fetch_weights(url)
    assert url in str(info.value)
    assert network.urls == []
    assert not (site / "zz.pth").exists()
    assert _files_under(tmp_path) == before


@pytest.mark.parametrize(
    ("weights", "reason"),
    [
        ("https://example.org/a/%2e%2e/%2E%2e/zz.pth", "escape"),
        ("https://example.org/a%2f..%2fzz.pth", "escape"),
        ("https://example.org/a/%zz.pth", "escape"),
        ("https://example.org/a\\..\\zz.pth", "character"),
        ("https://example.org/a/./zz.pth", "segment"),
        ("https://example.org//zz.pth", "segment"),
        ("https://example.org/models/", "segment"),
        ("https://example.org", "names no file"),
        ("https://user:secret@example.org/zz.pth", "user name"),
        ("https://example.org@evil.org/zz.pth", "user name"),
        ("https://exa mple.org/zz.pth", "host"),
        ("https://example.org/zz.pth#../../x", "character"),
        ("https://example.org/zz.pth?path=../../x", "query"),
        ("https://example.org/r 50.pth", "character"),
        ("detectron2://ImageNetPretrained/MSRA/R-50.pkl/../../../x.pkl", "segment"),
        ("detectron2://ImageNetPretrained/MSRA/not-published.pkl", "catalogue"),
        ("catalog://ImageNetPretrained/MSRA/R-50", "only over https://"),
        ("HTTPS://example.org/zz.pth", "only over https://"),
    ],
)
def test_tricky_names_are_refused_before_any_download(
    weights: str, reason: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    network = FakeNetwork(b"x")
    monkeypatch.setattr(weights_url, "download", network)
    with pytest.raises(WeightsUnavailableError, match=re.escape(reason)) as info:
        fetch_weights(weights)
    assert weights in str(info.value)
    assert network.urls == []
    assert not (home / ".cache" / "cellseg_d2").exists() or not any(
        (home / ".cache" / "cellseg_d2").iterdir()
    )


def test_download_lands_in_the_cache_under_a_derived_name(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    buffer = io.BytesIO()
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, buffer)
    network = FakeNetwork(buffer.getvalue())
    monkeypatch.setattr(weights_url, "download", network)
    url = "https://example.org:8443/runs/7/model_final(1).pth?matching_heuristics=True"
    local = Path(fetch_weights(url))
    cache = home / ".cache" / "cellseg_d2"
    assert local.parent == cache
    assert re.fullmatch(r"[0-9a-f]{16}-model_final_1_\.pth", local.name)
    assert local.read_bytes() == buffer.getvalue()
    assert network.urls == ["https://example.org:8443/runs/7/model_final(1).pth"]
    assert _files_under(tmp_path) == {local}  # no temporary file left, nothing elsewhere
    assert fetch_weights(url) == str(local) and len(network.urls) == 1  # cached


def test_a_broken_download_leaves_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights_url, "download", FakeNetwork(b"x" * 100, fail_after=50))
    with pytest.raises(WeightsUnavailableError, match="connection reset") as info:
        fetch_weights("https://example.org/R-50.pth")
    assert "https://example.org/R-50.pth" in str(info.value)
    assert list((home / ".cache" / "cellseg_d2").iterdir()) == []


def test_a_downloaded_pickle_from_elsewhere_is_not_unpickled(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "payload_ran"
    monkeypatch.setattr(weights_url, "download", FakeNetwork(_payload_pickle(marker)))
    with pytest.raises(WeightsUnavailableError, match="TRUST_PICKLE"):
        AtomicDetectionCheckpointer(torch.nn.Linear(2, 2)).load("https://example.org/m.pkl")
    assert not marker.exists()


def test_redirects_away_from_https_are_refused() -> None:
    handler = weights_url._HttpsOnlyRedirects()
    with pytest.raises(OSError, match="not https://"):
        handler.redirect_request(None, None, 302, "Found", {}, "http://example.org/x.pth")


def test_zoo_names_come_from_detectron2() -> None:
    names = zoo_names()
    assert "ImageNetPretrained/MSRA/R-50.pkl" in names
    assert "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl" in (
        names
    )
    assert not any(".." in name.split("/") for name in names)
    source = resolve_weights("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    assert source.zoo and source.url == (
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    )
    assert resolve_weights(source.url).zoo
    assert not resolve_weights("https://example.org/detectron2/R-50.pkl").zoo
    assert resolve_weights("output/run/model_final.pth").url == ""  # a local file


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_weights_name_is_accepted(path: Path) -> None:
    from cellseg_d2.config import load_cellseg_config

    weights = load_cellseg_config(path).MODEL.WEIGHTS
    if "://" in weights:
        assert resolve_weights(weights).url.startswith("https://")
