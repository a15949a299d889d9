"""One md5-checked file under the data root: downloaded atomically when missing, and checked
(unless the caller opts out for a large file it trusts once stored)."""

from __future__ import annotations

import http.client
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
    path: Path, url: str, expected_md5: str, *, download: bool, missing: Callable[[str], str],
    timeout: float = DOWNLOAD_TIMEOUT_S, verify_stored: bool = True,
) -> Path:
    """``path``, downloaded from ``url`` first if it is missing, its md5 checked either way.

    A download is always checked before it is written. ``timeout`` (seconds, default
    ``DOWNLOAD_TIMEOUT_S``) bounds the request; raise it for large files. ``verify_stored``
    (default ``True``) also checks the md5 of a file already stored, on every call; ``False``
    trusts a stored file (for large files whose hashing on every load is slow, e.g. SVHN's
    182 MB) and must not be used for files that are unpickled.

    ``missing(reason)`` is the one-line message for a missing file that cannot be fetched
    (``reason``: "download=False" or the download's error): it should name the path, the URL
    and the data-root setting. Nothing is unpickled or parsed here, so a caller reads the file
    only after its check.

    Raises:
        DatasetNotFoundError: missing and not downloadable (offline, or ``download=False``).
        ChecksumError: the download has the wrong md5 (it is discarded) or, with
            ``verify_stored``, the stored file does (it is left for the user to delete; the
            message names it).
    """
    if not path.is_file():
        if not download:
            raise DatasetNotFoundError(missing("download=False"))
        logger.info("downloading %s", url)
        try:
            payload = _fetch(url, timeout)
        except (OSError, http.client.HTTPException) as error:  # urllib's errors, timeouts,
            # unreachable hosts, truncated responses
            raise DatasetNotFoundError(missing(f"download failed: {error}")) from error
        actual = _md5(payload)
        if actual != expected_md5:
            raise ChecksumError(
                f"download of {url} has md5 {actual}, expected {expected_md5}; it was discarded"
            )
        _write_atomically(path, payload)
        logger.info("saved %s", path)
    if not verify_stored:
        return path
    actual = _md5(path)
    if actual != expected_md5:
        raise ChecksumError(
            f"{path} has md5 {actual}, expected {expected_md5}; it was not read. "
            "Delete it to download it again."
        )
    return path
