"""Writing files so that a crash at any moment leaves the old file or the new one, never half of one.

Every file the project writes for a user (checkpoints, datasets' meta files, exported folders) goes through here.
"""

import os
from pathlib import Path

from nanogpt.errors import UserError


def write_atomically(path, write, what="file"):
    """Write path through write(f), a function that writes to an open binary file: to a temporary sibling
    first, fsynced, then renamed into place and the directory entry fsynced. On failure the temporary file is
    removed, any previous file at path is left as it was, and a UserError says so."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)  # the rename is durable only once the directory entry is on disk
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {what} {path}: {e.strerror or e}; any previous one is intact") from None
    except BaseException:  # an interrupt (a second Ctrl-C) leaves no half-written file behind either
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomically(path, data, what="file"):
    write_atomically(path, lambda f: f.write(data), what)


def fsync_path(path):
    """Flush a file, or a folder's entries, to disk by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
