"""Where certificates and keys live on disk, and the one safe way to read such a file.

Kept apart from certs.py so that loading the config does not pull in cryptography and ctypes,
and so that the session-ticket key file is read with the same guards as the certificates.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CertificateSource:
    """Where one certificate chain and its key live on disk (paths already absolute)."""

    cert: Path
    key: Path
    passphrase_file: Path | None = None


# A PEM chain of a leaf and a few intermediates is a few KiB; a key less. A file far larger is a
# mistake (a log, a disk image, a file still growing) and reading it whole would cost its size in
# RSS, twice over during validation: refuse it before reading.
MAX_PEM_FILE_BYTES = 1 << 20


def read_pem_file(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_PEM_FILE_BYTES, never blocking.

    A FIFO, a device or a directory is refused from `stat` alone, so nothing waits in `open()`
    for a writer that never comes; the file is then opened non-blocking and checked again with
    `fstat` (it may have been swapped in between), and read with a bound in case it grows.
    OSError for a file that cannot be used, naming it.
    """
    _check_regular(path, path.stat())
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        _check_regular(path, os.fstat(fd))
        chunks = []
        left = MAX_PEM_FILE_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_PEM_FILE_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_PEM_FILE_BYTES} bytes", str(path))
    return data


def _check_regular(path: Path, status: os.stat_result) -> None:
    if not stat.S_ISREG(status.st_mode):
        kind = "a directory" if stat.S_ISDIR(status.st_mode) else "not a regular file"
        raise OSError(errno.EINVAL, f"{kind} (a FIFO, device or socket is refused)", str(path))
    if status.st_size > MAX_PEM_FILE_BYTES:
        raise OSError(
            errno.EFBIG,
            f"{status.st_size} bytes, larger than the {MAX_PEM_FILE_BYTES}-byte limit",
            str(path),
        )
