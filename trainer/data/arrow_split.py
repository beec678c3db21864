"""A local split file as normalised rows in an Arrow file on disk: validated column-wise, cached by content.

csv/tsv/jsonl files are read by Arrow's streaming readers a block at a time, and the task's kind turns
each block into its normalised columns with Arrow compute (`TaskKind.normalise_arrow`): label-in-set,
numbers, choice counts, column by column. Where that can't vouch for every row (a bad row, a null, a value
Arrow converts differently, a format only the kind reads: txt, CoNLL), the file is read again row by row
(`trainer.data.file_rows`), which names the first bad row's file and line, or else normalises the rows itself.
Either way the rows go to disk in batches and come back memory-mapped: memory stays flat with the data.

The result is cached in the datasets cache under a key of the file's bytes and the task's declaration, so a
second start reads nothing but the file's hash; it is written only once the whole split has validated.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
from datasets.arrow_writer import ArrowWriter
from datasets.table import MemoryMappedTable

from trainer.data.file_rows import csv_reader, iter_file_rows, python_encoding
from trainer.errors import UserError
from trainer.tasks.spec import TaskData, TaskSpec

READER_VERSION = "3"  # bump when reading or normalising changes, to invalidate cached splits
BLOCK_BYTES = 1 << 20  # Arrow parses about this much at a time
BATCH_ROWS = 10_000  # rows per batch written on the row-by-row path

# Who withholds the test labels of a built-in task's source, for the error that refuses to score them.
_WITHHELD = {"nyu-mll/glue": "GLUE", "tau/commonsense_qa": "CommonsenseQA"}


class UnlabelledSplit(UserError):
    """A split whose rows carry no labels (GLUE's and CommonsenseQA's test splits): it can only be predicted."""

    def __init__(self, task: TaskSpec, split: str, where: str):
        self.task = task
        owner = f" ({_WITHHELD[task.hub_path]} withholds them)" if task.hub_path in _WITHHELD else ""
        dev = "score the dev split, or " if split != "dev" else ""
        super().__init__(f"task {task.name!r}: the {split} split ({where}) has no labels{owner}; {dev}write "
                         "predictions with predict-file")


def cache_dir() -> Path:
    """This trainer's folder in the datasets cache: validated rows here, their tokenised forms (`dataset.py`) too."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "multitask_trainer"


def read_local_split(task: TaskSpec, path: str, split: str = "train") -> TaskData:
    """Read and validate one labelled split file; every problem names the file and line."""
    if not Path(path).is_file():
        raise UserError(f"task {task.name!r}: data file {path} not found")
    key = content_key(task, path)
    target = cache_dir() / f"rows-{task.name}-{key}.arrow"
    if not target.is_file():
        _write_split(task, path, split, target)
    return TaskData(dataset=_open(target, task, key))


def content_key(task: TaskSpec, path: str) -> str:
    """A digest of the file's bytes and everything in the task that changes how they are read."""
    digest = hashlib.sha256()
    for file in filter(None, (path, task.labels_file_of(path))):  # a parallel labels file is part of the split
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    # `split:` carves the parsed rows afterwards, so a new seed or fraction reuses the same parsed file
    declaration = {k: v for k, v in task.to_dict().items() if not k.endswith("_file") and k != "split"}
    digest.update(json.dumps([READER_VERSION, task.file_format(path), declaration], sort_keys=True,
                             default=str).encode())
    return digest.hexdigest()[:24]


def _open(path: Path, task: TaskSpec, key: str) -> datasets.Dataset:
    info = datasets.DatasetInfo(features=task.kind.features(task))
    return datasets.Dataset(MemoryMappedTable.from_file(str(path)), info=info, fingerprint=key)


def _write_split(task: TaskSpec, path: str, split: str, target: Path) -> None:
    """Normalise the file into `target`: column-wise if every batch allows it, else row by row."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        count = _write(partial, task, _arrow_batches(task, path, split))
        if count is None:
            count = _write(partial, task, _row_batches(task, path, split))
        if not count:
            raise UserError(f"task {task.name!r}: split file {path} has no rows; each split needs at least one")
        rows = _open(partial, task, "checking")
        task.kind.check_split(task, {name: rows.data.column(name) for name in rows.column_names}, path)
        del rows
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _write(path: Path, task: TaskSpec, batches: Iterator[pa.Table | None]) -> int | None:
    """Write normalised batches; None (and nothing usable written) as soon as one batch is None."""
    writer = ArrowWriter(features=task.kind.features(task), path=str(path))
    try:
        for batch in batches:
            if batch is None:
                return None
            writer.write_table(batch)
        count, _ = writer.finalize()
        return count
    finally:
        writer.close()


def _row_batches(task: TaskSpec, path: str, split: str) -> Iterator[pa.Table]:
    """The exact path: every row through the kind's `normalise`, which names a bad row's file and line."""
    schema = task.kind.features(task).arrow_schema
    batch, first = TaskData(), True
    for where, row in iter_file_rows(task, path):
        if first and not task.kind.has_label(task, row):
            raise UnlabelledSplit(task, split, path)
        first = False
        batch.append(task.kind.normalise(task, row, where))
        if len(batch) == BATCH_ROWS:
            yield pa.Table.from_pydict(batch.lists, schema=schema)
            batch = TaskData()
    if len(batch):
        yield pa.Table.from_pydict(batch.lists, schema=schema)


def _arrow_batches(task: TaskSpec, path: str, split: str) -> Iterator[pa.Table | None]:
    """The fast path: Arrow blocks normalised column-wise; a None where it can't vouch for a block."""
    try:
        blocks = _raw_blocks(task, path)
        if blocks is None:
            yield None
            return
        first = True
        for block in blocks:
            if not block.num_rows:
                continue
            if first and not task.kind.has_label(task, block.slice(0, 1).to_pylist()[0]):
                raise UnlabelledSplit(task, split, path)
            first = False
            normalised = task.kind.normalise_arrow(task, block)
            yield None if normalised is None or _has_nul(normalised) else normalised
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, UnicodeDecodeError):
        # a row Arrow can't parse (column count, quoting, encoding, JSON types that change): go row by row
        yield None


def _has_nul(table: pa.Table) -> bool:
    """A NUL character in any text of the block (JSON's \\u0000 too): the row reader then names its line."""
    for column in table.columns:
        while pa.types.is_list(column.type):
            column = pc.list_flatten(column)
        texts = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        if texts and pc.any(pc.match_substring(column, "\0")).as_py():
            return True
    return False


def _raw_blocks(task: TaskSpec, path: str) -> Iterator[pa.Table] | None:
    """The file's raw rows, a block at a time, every csv/tsv cell a string; None for what Arrow doesn't read
    here as the row reader would (other formats or encodings, a header it can't place)."""
    fmt = task.file_format(path)
    if fmt not in ("csv", "tsv", "jsonl") or python_encoding(task) != "utf-8-sig":
        return None
    if fmt == "jsonl":  # each block's types are inferred on their own: no block fixes the next one's
        return (pa_json.read_json(pa.BufferReader(_utf8(piece))) for piece in _pieces(path, quoted=False))
    header = _header(task, path, fmt)
    if header is None:
        return None
    raw, names = header
    parse = (pa_csv.ParseOptions(delimiter="\t", quote_char=False) if fmt == "tsv"
             else pa_csv.ParseOptions(newlines_in_values=True))
    convert = pa_csv.ConvertOptions(column_types={c: pa.string() for c in raw}, strings_can_be_null=False)
    return (
        pa_csv.read_csv(pa.BufferReader(piece), parse_options=parse, convert_options=convert,
                        read_options=pa_csv.ReadOptions(use_threads=False, block_size=len(piece) + 1,
                                                        column_names=None if task.header and i == 0 else raw)
                        ).rename_columns(names)
        for i, piece in enumerate(_pieces(path, quoted=fmt == "csv"))
    )


def _utf8(piece: bytes) -> bytes:
    """The piece, once it is known to be UTF-8 (Arrow's JSON reader does not check; its csv reader does)."""
    piece.decode("utf-8")
    return piece


def _pieces(path: str, quoted: bool) -> Iterator[bytes]:
    """The file in pieces of about BLOCK_BYTES, each ending at a row boundary: a newline (in a csv file, one
    after an even number of quote characters, so not inside a quoted field). A longer row makes a longer piece.
    (Arrow's own streaming reader reads ahead of the batches taken, and its memory grows with the file.)"""
    with open(path, "rb") as handle:
        rest = b""
        while data := handle.read(BLOCK_BYTES):
            piece = rest + data
            cut = _last_boundary(piece, quoted)
            if cut < 0:
                rest = piece
                continue
            yield piece[:cut + 1]
            rest = piece[cut + 1:]
        if rest:
            yield rest


def _last_boundary(piece: bytes, quoted: bool) -> int:
    """The offset of the last newline that ends a row in `piece` (which starts at a row boundary), or -1."""
    cut = piece.rfind(b"\n")
    while quoted and cut >= 0 and piece.count(b'"', 0, cut) % 2:
        cut = piece.rfind(b"\n", 0, cut)
    return cut


def _header(task: TaskSpec, path: str, fmt: str) -> tuple[list[str], list[str]] | None:
    """(the column names as Arrow reads them, the names rows get): as the row reader takes them, or None."""
    if not task.header:
        names = list(task.column_names)
        return (names, names) if names and len(set(names)) == len(names) else None
    try:
        with open(path, encoding=python_encoding(task), newline="") as handle:
            reader = csv_reader(handle, fmt)
            cells: list[str] = next(reader, [])
    except UnicodeDecodeError:
        return None
    names = list(task.column_names) or [c.strip() for c in cells]
    if not cells or len(set(cells)) != len(cells) or len(set(names)) != len(names) or len(names) != len(cells):
        return None  # a blank first line, a repeated name, a count that differs: the row reader says what
    return cells, names
