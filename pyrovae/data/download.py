"""One md5-checked file under the data root: downloaded atomically when missing, checked always."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from pyrovae.data.mnist import (
    DOWNLOAD_TIMEOUT_S,
    ChecksumError,
    DatasetNotFoundError,
    _fetch,
    _md5,
    _write_atomically,
)

logger = logging.getLogger(__name__)


def checked_file(
    path: Path, url: str, expected_md5: str, *, download: bool, missing: Callable[[str], str]
) -> Path:
    """``path``, downloaded from ``url`` first if it is missing, its md5 checked either way.

    ``missing(reason)`` is the one-line message for a missing file that cannot be fetched
    (``reason``: "download=False" or the download's error): it should name the path, the URL
    and the data-root setting. Nothing is unpickled or parsed here, so a caller reads the file
    only after its check.

    Raises:
        DatasetNotFoundError: missing and not downloadable (offline, or ``download=False``).
        ChecksumError: the download has the wrong md5 (it is discarded) or the stored file does
            (it is left for the user to delete; the message names it).
    """
    if not path.is_file():
        if not download:
            raise DatasetNotFoundError(missing("download=False"))
        logger.info("downloading %s", url)
        try:
            payload = _fetch(url, DOWNLOAD_TIMEOUT_S)
        except OSError as error:  # urllib's errors, timeouts and unreachable hosts
            raise DatasetNotFoundError(missing(f"download failed: {error}")) from error
        actual = _md5(payload)
        if actual != expected_md5:
            raise ChecksumError(
                f"download of {url} has md5 {actual}, expected {expected_md5}; it was discarded"
            )
        _write_atomically(path, payload)
        logger.info("saved %s", path)
    actual = _md5(path)
    if actual != expected_md5:
        raise ChecksumError(
            f"{path} has md5 {actual}, expected {expected_md5}; it was not read. "
            "Delete it to download it again."
        )
    return path
