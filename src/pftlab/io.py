"""Atomic writes: a stage killed mid-write never leaves a half file that DVC could cache."""
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))


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
        yield tmp
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
