"""The signing key of an embedded run, kept in the data folder so a restart keeps admins logged in.

When ``DJANGO_SECRET_KEY`` is unset, the settings read the key from ``<data folder>/secret_key``,
creating it (mode 0600) on the first start. Several instances still need one key given to all of
them (``DJANGO_SECRET_KEY``): each would otherwise keep its own. No Django import: the settings use it.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

KEY_FILE_NAME = "secret_key"
# How long to wait for a key file that another process created and has not written yet.
_WRITE_WAIT_SECONDS = 2.0


class SecretKeyFileError(Exception):
    """The key file exists but holds no key."""


@dataclass(frozen=True)
class KeptKey:
    """A key read from, or just written to, ``path``."""

    key: str
    path: Path
    created: bool


def secret_key_keep(folder: Path) -> KeptKey:
    """The key in ``folder``'s key file, creating the file with a new random key if there is none.

    Two processes starting at once on the same folder agree on one key: the file is created
    exclusively, and the process that loses the race reads the winner's key. Raises ``OSError``
    when the folder cannot be read or written, ``SecretKeyFileError`` when the file stays empty.
    """
    path = folder / KEY_FILE_NAME
    deadline = time.monotonic() + _WRITE_WAIT_SECONDS
    while True:
        try:
            key = path.read_text().strip()
        except FileNotFoundError:
            created = _create(path)
            if created is not None:
                return KeptKey(created, path, created=True)
            continue
        if key:
            return KeptKey(key, path, created=False)
        if time.monotonic() > deadline:
            raise SecretKeyFileError(f"{path} is empty: delete it and a new key is made at the next start")
        time.sleep(0.02)


def _create(path: Path) -> str | None:
    """Write a new key to ``path`` if no file is there (readable by this user only); None if another process won."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None
    key = secrets.token_urlsafe(50)
    with os.fdopen(descriptor, "w") as file:
        file.write(key + "\n")
        file.flush()
        os.fsync(file.fileno())
    return key
