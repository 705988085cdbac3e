"""Where ``MODEL.WEIGHTS`` comes from: names checked here, downloads into a private cache.

A weights name is checked by this module before any library sees it, because the libraries trust
too much: iopath resolves ``..`` inside a URL's path to a file outside its cache (so
``detectron2://../../x.pkl`` loads a local pickle as if it came from the model zoo) and stores a
download at a path taken from the URL (so ``https://host/../../site-packages/x.pth`` writes a
file that Python runs at start-up). So (see README, "Trust"):

- a name without ``://`` is a local file and is used as it is;
- ``https://host[:port]/path`` is accepted only with a plain host, no user name, and a path of
  ordinary segments: no ``..``, ``.`` or empty segment, no backslash, no percent-encoded dot,
  slash or control character, no fragment and no query except detectron2's
  ``?matching_heuristics=True``;
- ``detectron2://NAME`` only for names detectron2 publishes (its model-zoo table, its ImageNet
  catalogue and the names its bundled configs use); it means
  ``https://dl.fbaipublicfiles.com/detectron2/NAME``;
- every other scheme (``http``, ``ftp``, ``file``, ``catalog``, ...) is refused;
- a download goes to a temporary file inside :func:`weights_cache_dir` and is renamed to a name
  derived here (the URL's SHA-256 and its sanitised file name), never to a path from the URL.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cellseg_d2.errors import CellSegError

__all__ = [
    "WeightsSource",
    "WeightsUnavailableError",
    "download",
    "fetch_weights",
    "is_zoo_weights",
    "resolve_weights",
    "weights_cache_dir",
    "zoo_names",
]

logger = logging.getLogger(__name__)

ZOO_SCHEME = "detectron2://"
#: Where detectron2's model zoo is served; ``.pkl`` files from here are trusted.
ZOO_URL = "https://dl.fbaipublicfiles.com/detectron2/"
ZOO_HOST = "dl.fbaipublicfiles.com"
DOWNLOAD_TIMEOUT_S = 60.0

_HOST = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"(?::[0-9]{1,5})?$"
)
# RFC 3986 path characters; "%" is checked escape by escape below.
_SEGMENT = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@%-]+$")
_ESCAPE = re.compile(r"%(?:([0-9A-Fa-f]{2})|)")
_QUERY = re.compile(r"^matching_heuristics=(?:True|False|true|false)$")
_UNSAFE_BASENAME = re.compile(r"[^A-Za-z0-9._-]")
_ZOO_STRING = re.compile(r"detectron2://([A-Za-z0-9._/-]+)")


class WeightsUnavailableError(CellSegError, RuntimeError):
    """``MODEL.WEIGHTS`` names a file or URL that cannot be read (e.g. an offline machine) or that
    is refused because loading it could run code or write outside the cache."""


@dataclass(frozen=True)
class WeightsSource:
    """``MODEL.WEIGHTS`` once checked.

    Attributes:
        name: the name as given, without detectron2's ``?matching_heuristics=...`` query.
        url: the ``https://`` URL to download; empty for a local file.
        zoo: whether it comes from detectron2's model zoo (whose ``.pkl`` files are trusted).
    """

    name: str
    url: str = ""
    zoo: bool = False

    @property
    def cache_name(self) -> str:
        """The file name of the download in the cache: the URL's SHA-256 (16 hex digits) and its
        sanitised last segment, so two URLs never share a file and the suffix (``.pkl`` or
        ``.pth``, which decides how it is read) is kept."""
        digest = hashlib.sha256(self.url.encode("utf-8")).hexdigest()[:16]
        basename = _UNSAFE_BASENAME.sub("_", self.url.rsplit("/", 1)[-1])[-100:].lstrip(".")
        return f"{digest}-{basename or 'weights'}"


def resolve_weights(weights: str) -> WeightsSource:
    """Check a ``MODEL.WEIGHTS`` value and say where it comes from, before anything reads it.

    Raises:
        WeightsUnavailableError: a refused scheme, host, path, query or zoo name, naming the
            value and the reason.
    """
    name, _, query = weights.partition("?")
    if query and not _QUERY.match(query):
        _refuse(weights, f"the query '?{query}' is not supported (only ?matching_heuristics=True)")
    if "://" not in name:
        return WeightsSource(name)
    scheme, rest = name.split("://", 1)
    if scheme == "detectron2":
        segments = _check_path(weights, rest)
        zoo_name = "/".join(segments)
        if zoo_name not in zoo_names():
            _refuse(
                weights,
                f"'{zoo_name}' is not in detectron2's model zoo catalogue (e.g. "
                "detectron2://ImageNetPretrained/MSRA/R-50.pkl); for other files give an "
                "https:// URL or a local path",
            )
        return WeightsSource(name, ZOO_URL + zoo_name, zoo=True)
    if scheme != "https":
        raise WeightsUnavailableError(
            _weights_hint(
                weights,
                f"{scheme}:// is refused: weights are downloaded only over https:// "
                "(or as detectron2:// model-zoo names)",
            )
        )
    host, slash, path = rest.partition("/")
    if "@" in host:
        _refuse(weights, "a user name or password in the URL is refused")
    if not _HOST.match(host):
        _refuse(weights, f"'{host}' is not a plain host name (or host:port)")
    segments = _check_path(weights, path if slash else "")
    url = f"https://{host}/{'/'.join(segments)}"
    zoo = host.lower() == ZOO_HOST and segments[0] == "detectron2" and len(segments) > 1
    return WeightsSource(name, url, zoo=zoo)


def is_zoo_weights(weights: str) -> bool:
    """Whether ``weights`` is an accepted name from detectron2's model zoo (False if refused)."""
    try:
        return resolve_weights(weights).zoo
    except WeightsUnavailableError:
        return False


def _check_path(weights: str, path: str) -> list[str]:
    """The segments of a URL path; refuses anything that could climb out or hide a separator."""
    if not path:
        _refuse(weights, "the URL names no file")
    segments = path.split("/")
    for segment in segments:
        if not segment or set(segment) == {"."}:
            _refuse(weights, "the URL path has an empty, '.' or '..' segment")
        if not _SEGMENT.match(segment):
            _refuse(
                weights,
                f"the URL path segment '{segment}' has a character outside plain URL "
                "characters (e.g. a backslash, space, '#' or non-ASCII letter)",
            )
        for escape in _ESCAPE.finditer(segment):
            code = escape.group(1)
            char = chr(int(code, 16)) if code else ""
            if not char or not "!" <= char <= "~" or char in "./\\%?#":
                _refuse(
                    weights, f"the URL path has the escape '{escape.group(0)}' (e.g. '.' or '/')"
                )
    return segments


def _refuse(weights: str, reason: str) -> None:
    raise WeightsUnavailableError(f"refusing MODEL.WEIGHTS '{weights}': {reason}")


@functools.lru_cache(maxsize=1)
def zoo_names() -> frozenset[str]:
    """The file names detectron2 publishes under ``detectron2://``.

    Taken from the installed detectron2: the trained models of its model zoo
    (``<config>/<id>/model_final_<hash>.pkl``), its ImageNet catalogue
    (``ImageNetPretrained/MSRA/R-50.pkl``, ...) and every ``detectron2://`` name in its bundled
    configs (e.g. ``ImageNetPretrained/FAIR/X-101-32x8d.pkl``).
    """
    from detectron2.checkpoint.catalog import ModelCatalog
    from detectron2.model_zoo import model_zoo

    names = {name for name in ModelCatalog.C2_IMAGENET_MODELS.values() if name.endswith(".pkl")}
    # NOTE: detectron2 keeps the zoo table in a private class; its public lookup needs a config.
    table = getattr(getattr(model_zoo, "_ModelZooUrls", None), "CONFIG_PATH_TO_URL_SUFFIX", {})
    names.update(f"{config}/{suffix}" for config, suffix in table.items())
    configs = Path(model_zoo.__file__).parent / "configs"
    if configs.is_dir():
        for path in configs.rglob("*"):
            if path.suffix in (".yaml", ".py") and path.is_file():
                names.update(_ZOO_STRING.findall(path.read_text(encoding="utf-8", errors="ignore")))
    return frozenset(name for name in names if ".." not in name.split("/"))


def weights_cache_dir() -> Path:
    """The private download cache: ``$XDG_CACHE_HOME/cellseg_d2`` (``~/.cache/cellseg_d2``).

    Created with mode 0700; a folder owned by someone else is refused, and one of ours that
    others can read or write is made private again. A shared cache would let another user
    replace a file we later load.

    Raises:
        WeightsUnavailableError: the folder cannot be created, is not ours, or is not writable.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    folder = Path(base).expanduser() / "cellseg_d2"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode):
            raise OSError("not a folder")
        if info.st_uid != os.getuid():
            raise OSError(f"owned by uid {info.st_uid}, not by this user")
        if info.st_mode & 0o077:
            folder.chmod(0o700)
        if not os.access(folder, os.W_OK):
            raise OSError("not writable")
    except OSError as exc:
        raise WeightsUnavailableError(
            f"weights cache {folder} cannot be used: {exc}; set XDG_CACHE_HOME to a private "
            "folder of yours"
        ) from exc
    return folder


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to ``https://`` URLs only."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        """Refuse a redirect away from ``https://`` (a download must not fall back to http)."""
        if not newurl.startswith("https://"):
            raise OSError(f"redirected to {newurl}, which is not https://")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download(url: str, handle: BinaryIO) -> None:
    """Write the body of ``url`` (``https://`` only) to ``handle``.

    The one place the network is touched; tests replace it. It is given an open file, not a
    path, so the URL can never choose where the bytes go.
    """
    opener = urllib.request.build_opener(_HttpsOnlyRedirects())
    with opener.open(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        shutil.copyfileobj(response, handle, 1 << 20)


def fetch_weights(weights: str) -> str:
    """Return a local path for ``MODEL.WEIGHTS``, downloading (and caching) URLs once.

    The name is checked by :func:`resolve_weights` first; a URL is downloaded into
    :func:`weights_cache_dir` under :attr:`WeightsSource.cache_name` (through a temporary file
    in the same folder and a rename, so a killed download leaves no half file under that name).

    Raises:
        WeightsUnavailableError: a refused name, or a file that cannot be read or downloaded,
            with the name and the two ways forward instead of a socket or HTTP traceback.
    """
    source = resolve_weights(weights)
    if not source.url:
        if not os.path.isfile(source.name):
            raise WeightsUnavailableError(_weights_hint(weights, "no such file"))
        return source.name
    cache = weights_cache_dir()
    target = cache / source.cache_name
    if os.path.lexists(target):
        if not target.is_file() or target.is_symlink():
            raise WeightsUnavailableError(
                _weights_hint(weights, f"the cached copy {target} is not a plain file; remove it")
            )
        return str(target)
    logger.info("Downloading MODEL.WEIGHTS %s to %s", source.url, target)
    fd, temp = tempfile.mkstemp(dir=cache, prefix=f".{source.cache_name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            download(source.url, handle)
        os.replace(temp, target)
    except Exception as exc:  # URLError, HTTPError, OSError, a refused redirect
        raise WeightsUnavailableError(
            _weights_hint(weights, f"{type(exc).__name__}: {exc}")
        ) from exc
    finally:  # also on KeyboardInterrupt: no half file is left behind
        if os.path.lexists(temp):
            os.unlink(temp)
    logger.info("Downloaded %s (%d bytes)", target, target.stat().st_size)
    return str(target)


def _weights_hint(weights: str, reason: str) -> str:
    return (
        f"cannot read MODEL.WEIGHTS '{weights}': {reason}\n"
        "  - offline? download the file elsewhere, copy it here and pass "
        "MODEL.WEIGHTS /path/to/file\n"
        "  - or train from random initialisation with "
        "configs/mask_rcnn_R_50_FPN_scratch_cells.yaml (GroupNorm, no weights needed)"
    )
