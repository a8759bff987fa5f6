"""Model artifacts opened once, so that a ``sha256`` pin checks the bytes that are loaded.

Hashing a path and then handing the same path to a backend leaves a window: a file replaced in
between (a volume updated, a symlink switched) would be loaded unchecked. Instead the artifact
is opened once, a file as one descriptor and a folder as one per file (sorted), it is hashed
through those descriptors, and the backend is given a private folder of symlinks to
``/proc/self/fd/N``. Opening one of those opens the very file that was hashed, whatever has
happened to the path since. A write into the same file, which would change what the descriptor
reads, is caught after the load: its size or mtime moved, or its ctime moved (a rename or unlink
of the path moves it too) and the file no longer hashes the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from batchserve.backends.base import LoadError

_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class _OpenFile:
    relative: str
    """The file's path inside the artifact (its own name for a single file), posix style."""
    fd: int
    status: tuple[int, int, int, int, int]
    """(device, inode, size, mtime_ns, ctime_ns) when opened."""


def _status(fd: int) -> tuple[int, int, int, int, int]:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _file_sha256(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _CHUNK_BYTES, offset):  # pread: the descriptor's offset stays 0
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Artifact:
    folder: bool
    files: list[_OpenFile]


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[_Artifact]:
    """Every file of the artifact at ``path``, open for reading, closed on exit."""
    folder = path.is_dir()
    children = ([(c.relative_to(path).as_posix(), c) for c in sorted(path.rglob("*")) if c.is_file()]
                if folder else [(path.name, path)])
    files: list[_OpenFile] = []
    try:
        for relative, child in children:
            try:
                # O_NONBLOCK: a FIFO put in the artifact's place must not hang the load.
                fd = os.open(child, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError as exc:
                raise LoadError(f"cannot read {child}: {exc.strerror}") from None
            files.append(_OpenFile(relative, fd, _status(fd)))
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise LoadError(f"{child} is not a regular file")
        yield _Artifact(folder, files)
    finally:
        for file in files:
            os.close(file.fd)


def _digest(artifact: _Artifact, file_digests: list[str]) -> str:
    """The digest ``sha256`` pins: a file's own SHA-256; for a folder (a ``save_pretrained``
    layout), the SHA-256 of its sorted ``relative/path<TAB>file-sha256`` lines, so that any
    changed, added or removed file changes it."""
    if not artifact.folder:
        [digest] = file_digests
        return digest
    lines = "".join(f"{f.relative}\t{d}\n" for f, d in zip(artifact.files, file_digests, strict=True))
    return hashlib.sha256(lines.encode()).hexdigest()


def artifact_sha256(path: Path) -> str:
    """The digest to pin for the artifact at ``path``; ``batchserve sha256 PATH`` prints it."""
    with _opened(path) as artifact:
        return _digest(artifact, [_file_sha256(f.fd) for f in artifact.files])


def _changed(file: _OpenFile, digest: str) -> bool:
    now = _status(file.fd)
    if now[:4] != file.status[:4]:  # device, inode, size, mtime: written
        return True
    # ctime moves on a write, and also on a rename or unlink of the path: hash again to tell.
    return now[4] != file.status[4] and _file_sha256(file.fd) != digest


def _descriptor_path(fd: int) -> str:
    """A path whose opening opens descriptor ``fd``'s file (Linux; /dev/fd elsewhere)."""
    return f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else f"/dev/fd/{fd}"


@contextlib.contextmanager
def pinned(path: Path, sha256: str, *, after_hash: Callable[[], None] | None = None) -> Iterator[Path]:
    """Check the artifact at ``path`` against ``sha256`` and yield a path with the same name
    and layout that reads the very files hashed; the backend must read them before the block
    ends. ``LoadError`` if the digest differs, or if a file changed before the block ended.
    ``after_hash`` runs between the check and the block (tests replace the file there)."""
    with _opened(path) as artifact:
        file_digests = [_file_sha256(f.fd) for f in artifact.files]
        actual = _digest(artifact, file_digests)
        if actual != sha256:
            raise LoadError(f"sha256 of {path} is {actual}, but models.toml pins {sha256}; "
                            "refusing to load it")
        if after_hash is not None:
            after_hash()
        mirror = Path(tempfile.mkdtemp(prefix="batchserve-pinned-"))
        try:
            root = mirror / path.name
            for file in artifact.files:
                link = root / file.relative if artifact.folder else root
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(_descriptor_path(file.fd))
            yield root
            pairs = zip(artifact.files, file_digests, strict=True)
            changed = [f.relative for f, d in pairs if _changed(f, d)]
            if changed:
                raise LoadError(f"{path} changed while it was loaded ({', '.join(changed[:5])}); "
                                "refusing it: load it again once it stays the same")
        finally:
            shutil.rmtree(mirror, ignore_errors=True)
