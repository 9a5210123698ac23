"""Rows of a preference file, folder or hub dataset, each with where it came from ("line 7", "row 12").

One reader for every route of `data.source` (and `data.raw`): JSONL (also .gz), JSON arrays, CSV/TSV,
Parquet, a local dataset folder (`save_to_disk`, or data files named by split) and a Hugging Face hub id.
JSON lines are parsed one by one with `json`, so one odd row can neither change how the others are read
(a loader that infers a column type from the whole file re-reads other rows) nor stop the file: it becomes a
counted skip with its line number. What cannot be read at all (a missing path, a truncated archive, a CSV
with a non-UTF-8 byte, a broken JSON array) is one `DataError` line naming the file and, where there is one,
the line. Nothing here imports `datasets` unless a folder or hub id asks for it.
"""
import csv
import gzip
import hashlib
import io
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from pftlab.core.errors import DataError

FILE_FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")  # each also as .gz but parquet


@dataclass
class Source:
    """What was read: rows as (where, dict or None), rows that could not be parsed as (where, reason),
    and a digest of the bytes (or, for a hub dataset, of its rows) recorded in metrics/prepare.json."""
    name: str
    rows: list = field(default_factory=list)
    unreadable: list = field(default_factory=list)
    digest: str = ""
    revision: str = ""


def _suffixes(path: Path) -> tuple:
    name = path.name.lower()
    gz = name.endswith(".gz")
    stem = name[:-3] if gz else name
    return next((s for s in FILE_FORMATS if stem.endswith(s)), ""), gz


def _read_bytes(path: Path, gz: bool) -> bytes:
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if gz else data
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: truncated or corrupt gzip file ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def _json_lines(data: bytes, where_prefix: str = "line") -> tuple:
    rows, bad = [], []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{where_prefix} {number}"
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            bad.append((where, "undecodable bytes (not UTF-8)"))
            continue
        except json.JSONDecodeError as e:
            bad.append((where, f"invalid JSON ({e.msg})"))
            continue
        if not isinstance(row, dict):
            bad.append((where, "not a JSON object"))
        else:
            rows.append((where, row))
    return rows, bad


def _utf8(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: byte 0x{data[e.start]:02x} is not UTF-8 (save the file as UTF-8)") from None


def _json_array(path: Path, data: bytes) -> tuple:
    try:
        items = json.loads(_utf8(path, data))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}, column {e.colno}: invalid JSON ({e.msg}); a truncated file?") from None
    if isinstance(items, dict):  # {"train": [...]} or one record: neither is a list of rows
        raise DataError(f"{path}: a JSON object at the top level; expected a list of rows (or JSON lines)")
    rows, bad = [], []
    for i, item in enumerate(items, start=1):
        (rows.append((f"item {i}", item)) if isinstance(item, dict) else bad.append((f"item {i}", "not a JSON object")))
    return rows, bad


def _delimited(path: Path, data: bytes, delimiter: str) -> tuple:
    reader = csv.DictReader(io.StringIO(_utf8(path, data), newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        raise DataError(f"{path}: no header row")
    rows, bad = [], []
    try:
        for row in reader:
            where = f"line {reader.line_num}"
            if None in row:  # more cells than header columns
                bad.append((where, f"{len(reader.fieldnames) + len(row[None])} cells for {len(reader.fieldnames)} columns"))
            elif any(v is None for v in row.values()):
                bad.append((where, f"fewer cells than the {len(reader.fieldnames)} columns"))
            else:
                rows.append((where, row))
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: {e}") from None
    return rows, bad


def _parquet(path: Path) -> list:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    return [(f"row {i}", row) for i, row in enumerate(table.to_pylist(), start=1)]


def read_file(path) -> Source:
    """Every row of one local file, by its suffix."""
    path = Path(path)
    kind, gz = _suffixes(path)
    if not kind:
        raise DataError(f"{path}: unknown file type; expected one of {', '.join(FILE_FORMATS)} (or .jsonl.gz, .json.gz, "
                        f".csv.gz, .tsv.gz), or a dataset folder")
    if kind == ".parquet":
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        rows, bad = _parquet(path), []
        data = path.read_bytes()
    else:
        data = _read_bytes(path, gz)
        if kind == ".jsonl" or (kind == ".json" and not data.lstrip()[:1] == b"["):
            rows, bad = _json_lines(data)
        elif kind == ".json":
            rows, bad = _json_array(path, data)
        else:
            rows, bad = _delimited(path, data, "\t" if kind == ".tsv" else ",")
    if not rows and not bad:
        raise DataError(f"{path}: no rows")
    return Source(str(path), rows, bad, hashlib.sha256(data).hexdigest())


def _rows_digest(rows: list) -> str:
    h = hashlib.sha256()
    for _, row in rows:
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
    return h.hexdigest()


def read_folder(path: Path, split: str) -> Source:
    """A dataset folder: `Dataset.save_to_disk` output (a DatasetDict's `split`), or data files whose names
    contain the split (a clone of a hub dataset repository), read in name order."""
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: not a readable dataset folder ({type(e).__name__}: {e})") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path}: no split '{split}' (has: {', '.join(ds)}); set data.source.split")
            ds = ds[split]
        rows = [(f"row {i}", row) for i, row in enumerate(ds, start=1)]
        return Source(str(path), rows, [], _rows_digest(rows))
    files = sorted(f for f in path.rglob("*") if f.is_file() and _suffixes(f)[0] and split in f.name)
    if not files:
        raise DataError(f"{path}: a folder with no dataset (save_to_disk) and no data file named with split '{split}'")
    out = Source(str(path))
    digest = hashlib.sha256()
    for f in files:
        part = read_file(f)
        name = f.relative_to(path).as_posix()
        out.rows += [(f"{name} {where}", row) for where, row in part.rows]
        out.unreadable += [(f"{name} {where}", reason) for where, reason in part.unreadable]
        digest.update(part.digest.encode())
    out.digest = digest.hexdigest()
    return out


def read_hub(repo_id: str, split: str, config=None, revision=None, key="data.source") -> Source:
    """A Hugging Face hub dataset at a pinned revision; offline and not cached: one line saying what to do."""
    import datasets

    from pftlab.lm.hub import _offline_message, go_offline, hub_reachable

    if not hub_reachable():
        go_offline()
    try:
        ds = datasets.load_dataset(repo_id, config, split=split, revision=revision)
    except Exception as e:  # noqa: BLE001 - datasets raises many types for "not found / offline"
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise DataError(_offline_message("dataset", repo_id, f"{key}.id")) from None
        raise DataError(f"dataset '{repo_id}' (split '{split}') could not be loaded: {type(e).__name__}: {e}") from None
    rows = [(f"row {i}", row) for i, row in enumerate(ds, start=1)]
    return Source(f"dataset '{repo_id}'", rows, [], _rows_digest(rows), revision or getattr(ds, "_fingerprint", ""))


def looks_local(spec_id: str) -> bool:
    """A path (it exists, or it is written like one) rather than a hub id `org/name`: a mistyped local path
    must say "file not found", not send the user to `hf download`."""
    p = Path(spec_id)
    return p.exists() or spec_id.startswith((".", "/", "~")) or bool(_suffixes(p)[0]) or spec_id.count("/") != 1


def read_source(spec_id: str, split: str = "train", config=None, revision=None, key="data.source") -> Source:
    """The one entry point: a local file, a local folder or a hub id."""
    path = Path(os.path.expanduser(spec_id))
    if path.is_dir():
        return read_folder(path, split)
    if looks_local(spec_id):
        if not path.exists():
            raise DataError(f"{path}: file not found (set {key}.id to an existing file or folder, or a hub id org/name; "
                            f"`dvc exp run --queue` and `--temp` see only what git or DVC tracks: `dvc add` a file that "
                            f"is in your workspace)")
        return read_file(path)
    return read_hub(spec_id, split, config, revision, key)
