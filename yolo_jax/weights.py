"""Darknet's published COCO weights, fetched on first use.

The `transfer` variant (and `quick`) starts from `weights/<network>.weights` (defaults.darknet_weights_path) and
sets config.train.init_from_url to the file's published URL (`published_url`). When init_from names a file that
does not exist and init_from_url is set, `fetch_if_missing` downloads it, checks it and moves it into place:

- the URL may be http(s) (probed first: a TCP connect within PROBE_TIMEOUT_S, so an offline machine answers in
  seconds, DNS included) or file:// (tests);
- the bytes go to a temporary file beside the target and are renamed onto it only when complete and verified, so
  an interrupted or corrupt download never leaves a file that looks like weights;
- a file published under the target's name (`PUBLISHED`) is verified by its size and, where known, its sha256.
  Only yolov3-tiny.weights' sha256 could be computed here (from a copy of the published file); the other three
  are verified by size only, a truncated download's symptom (Darknet's value count check in darknet.py catches the
  rest of a wrong file when it is read).

Only a URL whose file name is the target's is fetched. Failure (offline, HTTP error, wrong size or checksum) is
returned as a message, never raised: the caller (transfer.initial_variables) then falls back as it does for a
missing file (config.train.init_from_missing).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from absl import logging

PROBE_TIMEOUT_S = 2.0  # the network answers within this, or the machine counts as offline
READ_TIMEOUT_S = 60.0  # a stalled download (no byte for this long) fails
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Published:
    """A published weights file: where it is and what it must be (sha256 None: not known, size only)."""

    url: str
    size: int
    sha256: str | None


PUBLISHED = {
    'yolov3.weights': Published('https://pjreddie.com/media/files/yolov3.weights', 248_007_048, None),
    'yolov3-tiny.weights': Published(
        'https://pjreddie.com/media/files/yolov3-tiny.weights', 35_434_956,
        'dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c'),
    # AlexeyAB's release assets, as linked from that repository's README (not verifiable offline: size only).
    'yolov4.weights': Published(
        'https://github.com/AlexeyAB/darknet/releases/download/darknet_yolo_v3_optimal/yolov4.weights',
        257_717_640, None),
    'yolov4-tiny.weights': Published(
        'https://github.com/AlexeyAB/darknet/releases/download/darknet_yolo_v4_pre/yolov4-tiny.weights',
        24_251_276, None),
}


def published_url(model_name: str) -> str:
    """The published URL of Darknet's COCO weights of `model_name` (config.model.name, e.g. 'yolov3_tiny')."""
    return PUBLISHED[f"{model_name.replace('_', '-')}.weights"].url


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True for file:// URLs, and for http(s) when a TCP connect to the URL's host succeeds within `timeout`
    seconds (in a worker thread, abandoned on timeout: DNS resolution ignores socket timeouts)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == 'file':
        return True
    if parts.scheme not in ('http', 'https') or not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == 'https' else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((parts.hostname, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name='weights-probe', daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def download(url: str, path: Path, *, size: int | None = None, sha256: str | None = None,
             timeout: float = READ_TIMEOUT_S) -> None:
    """Downloads `url` to `path` atomically (a temporary file beside it, renamed when complete and verified).

    Raises:
        OSError (urllib.error.URLError included) for transfer failures; ValueError when the bytes are not the
        expected `size` or `sha256`. The temporary file is removed either way.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.part', dir=path.parent)
    try:
        digest, got = hashlib.sha256(), 0
        with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                got += len(chunk)
        if size is not None and got != size:
            raise ValueError(f'got {got:,} bytes, expected {size:,} (a truncated or different file)')
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ValueError(f'sha256 {digest.hexdigest()} differs from the published file\'s {sha256}')
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch_if_missing(path: str | os.PathLike, url: str) -> str | None:
    """Makes sure `path` exists, downloading it from `url` when it does not (see the module docstring).

    Returns None when `path` exists (already, or now), else why it could not be fetched (one line).
    """
    path = Path(path)
    if path.exists():
        return None
    if not url:
        return 'no config.train.init_from_url to fetch it from'
    if Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name != path.name:
        # e.g. the transfer variant's URL kept after init_from was pointed at another file: never fill that name
        # with other weights.
        return f'config.train.init_from_url {url} names another file than {path.name}'
    if not reachable(url):
        return f'offline: {url} is not reachable'
    expected = PUBLISHED.get(path.name)
    size, sha256 = (expected.size, expected.sha256) if expected else (None, None)
    logging.info('%s is missing: downloading it from %s%s (once; config.train.init_from_url)', path, url,
                 f' ({size:,} bytes, checked by {"sha256" if sha256 else "size"})' if size else '')
    try:
        download(url, path, size=size, sha256=sha256)
    except (OSError, ValueError) as e:
        reason = getattr(e, 'reason', None) or e
        return f'downloading {url} failed: {reason}'
    return None
