"""Atomic writes: a stage killed mid-write, or out of disk space, never leaves a half file that DVC could
cache; a failed write is a one-line error naming the path."""
import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from pftlab.core.errors import PftlabError

_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EFBIG}
# Libraries that write in native code report a full disk in their own exception types.
_WRITE_MESSAGES = ("No space left", "StorageFull", "failed writing", "Disk quota")


class OutputError(PftlabError):
    """An output could not be written (disk full, read-only, not a directory); nothing was left behind."""


def _write_failure(path, err: BaseException):
    if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
        return OutputError(f"cannot write {path}: {err.strerror}; nothing was written")
    if any(m in str(err) for m in _WRITE_MESSAGES):
        return OutputError(f"cannot write {path}: {str(err).splitlines()[0][:200]}; nothing was written")
    return None


def check_writable(path):
    """Fail before any work if `path` cannot be written (read-only, a file in the way, disk full); creates nothing."""
    path = Path(path).absolute()
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        with tempfile.TemporaryFile(dir=folder) as f:
            f.write(b"0")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise (_write_failure(path, err) or err) from None


def _tmp_sibling(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except FileExistsError:
        raise OutputError(f"cannot write {path}: a file is in the way of its folder; nothing was written") from None
    except OSError as err:
        raise (_write_failure(path, err) or err) from None


def atomic_write_text(path, text: str) -> None:
    path = Path(path)
    tmp_dir = _tmp_sibling(path)
    tmp = tmp_dir / path.name
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as err:
        raise (_write_failure(path, err) or err) from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def atomic_write_jsonl(path, rows) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary directory that replaces `path` only if the block finishes without error."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        try:
            yield tmp
        except Exception as err:
            raise (_write_failure(path, err) or err) from None
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_csv(path, rows: list[dict]) -> None:
    """Rows of per-step numbers, the format `dvc plots` reads; columns are the union of keys."""
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join("" if row.get(c) is None else f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    atomic_write_text(path, "\n".join(lines) + "\n")
