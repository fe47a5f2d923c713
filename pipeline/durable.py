"""Durable commits: every file of a run directory (shard files, config.toml,
the manifest) is written under a temporary name in its folder (matching
:data:`TEMPORARY`), flushed and fsync'ed, renamed into place, and the folder
fsync'ed; new folders are fsync'ed into their parents. A killed run or a
crashed machine leaves whole files or none. An OSError (a full disk, an
unwritable folder) names the file being committed."""
import os
from pathlib import Path
import secrets

TEMPORARY = ".*.tmp"


def fsync_directory(directory):
    """fsync a folder, so that the names created or renamed in it survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directories(directory):
    """``mkdir -p``, fsync'ing each new folder into its parent."""
    directory = Path(directory)
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:             # another writer made it meanwhile
            if not folder.is_dir():
                raise
            continue
        fsync_directory(folder.parent)


def commit_file(path, write):
    """Durably replace ``path`` by what ``write(file)`` writes into an open
    binary file: a temporary name in the same folder, flush, fsync, rename into
    place, fsync the folder. Readers see the old file or the new one, whole."""
    path = Path(path)
    make_directories(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:            # a failed write or fsync: name the file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def commit_bytes(path, data):
    commit_file(path, lambda file: file.write(data))


def commit_text(path, text):
    commit_bytes(path, text.encode("utf-8"))
