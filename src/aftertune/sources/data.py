"""Rows of a data file: JSONL, JSON, CSV, Parquet, a `save_to_disk` folder, or a hub data set id.

Every reader returns `list[dict]`; bad input raises UserError naming the file and,
where there is one, the line or row.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.fileio import read_jsonl, read_text

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
            ".parquet": "parquet", ".pq": "parquet"}


def read_rows(source: str | Path, *, split: str | None = None, config: str | None = None) -> list[dict[str, Any]]:
    """Read `source` into a list of dicts.

    A JSON file may hold a list of objects, or an object with one list of objects under
    some key (e.g. moonshot's ``{"examples": [...]}``). `split` picks the split of a
    `DatasetDict` folder or hub data set (default "train"); `config` the hub configuration.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_saved_dataset(path, split)
    if path.is_file():
        fmt = SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise UserError(f"{path}: unsupported file type {path.suffix!r}; use one of "
                            f"{', '.join(sorted(SUFFIXES))} or a datasets save_to_disk folder")
        if fmt == "jsonl":
            return read_jsonl(path)
        if fmt == "json":
            return _read_json(path)
        if fmt in ("csv", "tsv"):
            return _read_csv(path, delimiter="\t" if fmt == "tsv" else ",")
        return _read_parquet(path)
    text = str(source)
    if text.startswith((".", "/", "~")) or path.suffix.lower() in SUFFIXES:
        raise UserError(f"{source}: file not found; pass an existing .jsonl/.json/.csv/.parquet file or folder")
    return _read_hub(text, split=split, config=config)


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(read_text(path, ".json file"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(lists) != 1:
            raise UserError(f"{path}: expected a list of objects, or an object with exactly one list of objects "
                            f"(found lists under {lists or 'no key'})")
        data = data[lists[0]]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise UserError(f"{path}: row {i}: expected an object, got {type(row).__name__}")
    return data


def _read_csv(path: Path, delimiter: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with io.StringIO(read_text(path, "CSV file"), newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        if not reader.fieldnames:
            raise UserError(f"{path}: empty file; the first line must name the columns")
        try:
            for row in reader:
                if None in row:
                    raise UserError(f"{path}:{reader.line_num}: more fields than the {len(reader.fieldnames)} "
                                    "columns of the header; quote values that contain the delimiter")
                rows.append(dict(row))
        except csv.Error as exc:
            raise UserError(f"{path}:{reader.line_num}: bad CSV ({exc})") from None
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    return rows


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise UserError(f"{path}: not a readable Parquet file ({exc})") from None


def _read_saved_dataset(path: Path, split: str | None) -> list[dict[str, Any]]:
    from datasets import DatasetDict, load_from_disk

    if not any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
        raise UserError(f"{path}: a folder, but not one written by datasets' save_to_disk; pass a data file instead")
    try:
        ds = load_from_disk(str(path))
    except Exception as exc:
        raise UserError(f"{path}: could not load the saved data set ({exc})") from None
    if isinstance(ds, DatasetDict):
        name = split or "train"
        if name not in ds:
            raise UserError(f"{path}: no split {name!r}; splits: {', '.join(ds)}")
        ds = ds[name]
    return ds.to_list()


def _read_hub(dataset_id: str, *, split: str | None, config: str | None) -> list[dict[str, Any]]:
    from aftertune.sources.resolve import hub_offline

    if hub_offline() or os.environ.get("HF_DATASETS_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise UserError(f"{dataset_id}: not a local file, and the Hugging Face hub is off (HF_HUB_OFFLINE=1); "
                        "pass a local .jsonl/.json/.csv/.parquet file")
    from datasets import load_dataset

    try:
        ds = load_dataset(dataset_id, config, split=split or "train")
    except Exception as exc:
        raise UserError(f"{dataset_id}: not a local file, and loading it from the Hugging Face hub failed "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); pass a local file") from None
    return ds.to_list()
