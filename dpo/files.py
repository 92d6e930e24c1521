"""Publishing files and folders atomically: a reader sees the old version or the new one, never a mix.

Every folder the project writes (checkpoints, DPO training states, preference datasets, step
folders, tokenizers and tiny models) is written under a hidden temporary sibling name and published
with `publish_dir`; single files go through `write_text_atomic`. This module lives in `dpo`, the
package every other one may import, so there is one implementation of the swap.
"""

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

__all__ = ["fsync_tree", "publish_dir", "sha256_file", "temp_sibling", "write_json_atomic", "write_text_atomic"]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes, read in chunks (weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def temp_sibling(dest: str | os.PathLike, tag: str = "") -> Path:
    """A hidden name beside `dest` for writing its next version (`.<name>.tmp-<tag>`)."""
    dest = Path(dest)
    return dest.parent / f".{dest.name}.tmp-{tag or uuid.uuid4().hex[:8]}"


def fsync_tree(root: Path) -> None:
    """Flush every file under `root`, then the folders, to stable storage."""
    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        _fsync(path)
    _fsync(root)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_dir(tmp: str | os.PathLike, dest: str | os.PathLike, *, durable: bool = False) -> Path:
    """Move the finished folder `tmp` to `dest`, replacing whatever `dest` held.

    The previous `dest` is renamed aside first and deleted only once the new folder is in place;
    if moving the new one in fails, the previous one is put back. A crash in between leaves either
    `dest` or its hidden `.old` copy, never a half-written `dest`.

    Args:
        tmp: A complete folder on the same file system as `dest`.
        dest: Where it is published.
        durable: fsync every file before the rename and the parent folder after it, so the new
            folder survives a power loss once this returns.

    Returns:
        `dest` as a Path.
    """
    tmp, dest = Path(tmp), Path(dest)
    if durable:
        fsync_tree(tmp)
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    if os.path.lexists(dest):
        os.rename(dest, old)
        try:
            os.rename(tmp, dest)
        except BaseException:
            os.rename(old, dest)
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.rename(tmp, dest)
    if durable:
        _fsync(dest.parent)
    return dest


def write_text_atomic(path: str | os.PathLike, text: str, *, durable: bool = False) -> Path:
    """Write `text` to a temporary sibling of `path` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | os.PathLike, data: Any, *, durable: bool = False) -> Path:
    """`data` as indented JSON (keys sorted, non-JSON values as strings), written atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", durable=durable)
