"""The raw rows of a local split file, one at a time, each with the file and line it came from.

This is the exact, row-by-row reader: `predict-file` streams it, and `trainer.data.arrow_split` falls back
on it to name the first bad row (and to read what Arrow can't). Every problem names the file and line.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.errors import UserError

if TYPE_CHECKING:
    from trainer.tasks.spec import TaskSpec

# The csv module refuses fields over 131,072 characters by default; a long document is a valid field.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def python_encoding(task: TaskSpec) -> str:
    """The codec that reads the task's files (UTF-8 drops a byte-order mark)."""
    return "utf-8-sig" if task.encoding.replace("-", "").lower() == "utf8" else task.encoding


def iter_file_rows(task: TaskSpec, path: str, labelled: bool = True) -> Iterator[tuple[str, dict[str, Any]]]:
    """The raw rows of a file in the task's format, lazily, as `(where, row)`: `where` is "path:line".
    `labelled=False` (predict-file's input) also takes plain text lines for a `label_from` task."""
    if not Path(path).is_file():
        raise UserError(f"task {task.name!r}: data file {path} not found")
    rows = _iter_rows(task, path, labelled)
    while True:
        try:
            where, row = next(rows)
        except StopIteration:
            return
        except UnicodeDecodeError as err:
            raise UserError(decode_error(task, path, err)) from None
        if _has_nul(row):
            raise UserError(f"{where}: a text contains a NUL character (binary data?); remove it, or fix the file")
        yield where, row


def _has_nul(value: Any) -> bool:
    """A NUL anywhere in a row's texts: no tokenizer reads it as text, and C-string tools cut the text there."""
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, dict):
        return any(_has_nul(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    return False


def decode_error(task: TaskSpec, path: str, err: UnicodeDecodeError | None = None) -> str:
    """Name the first line whose bytes are not valid in the task's encoding (the error's offset is
    relative to a decoder chunk, not the file)."""
    where = path
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            try:
                raw.decode(task.encoding)
            except UnicodeDecodeError as line_err:
                where, err = f"{path}:{lineno}", line_err
                break
    detail = f" ({err.reason}, byte {err.object[err.start:err.start + 1]!r})" if err else ""
    return (f"{where}: not valid {task.encoding}{detail}; convert the file to UTF-8, or set 'encoding:' on task "
            f"{task.name!r} (e.g. latin-1)")


def csv_reader(handle: Any, fmt: str) -> Iterator[list[str]]:
    # GLUE TSVs contain stray quote characters: read them with QUOTE_NONE.
    return csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else csv.reader(handle)


def _iter_rows(task: TaskSpec, path: str, labelled: bool = True) -> Iterator[tuple[str, dict[str, Any]]]:
    fmt = task.file_format(path)
    encoding = python_encoding(task)
    if fmt == "lines":
        yield from _line_rows(task, path, encoding, labelled)
        return
    if fmt not in ("csv", "tsv", "jsonl"):
        yield from task.kind.read_file(task, path, fmt, encoding)
        return
    with open(path, encoding=encoding, newline="") as handle:
        if fmt == "jsonl":
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path}:{lineno}: each JSONL line must be an object")
                yield f"{path}:{lineno}", row
            return
        reader = csv_reader(handle, fmt)
        header = list(task.column_names)
        lineno = 1
        for cells in reader:
            start, lineno = lineno, reader.line_num + 1  # a quoted field may span lines: name the first
            if not cells:
                continue
            if task.header and start == 1:
                header = header or [c.strip() for c in cells]
                continue
            if not header:
                raise UserError(f"task {task.name!r}: {path} has no header; set 'column_names' for it")
            if len(cells) != len(header):
                raise UserError(
                    f"{path}:{start}: expected {len(header)} columns ({', '.join(header)}), found {len(cells)}"
                )
            yield f"{path}:{start}", dict(zip(header, cells, strict=True))


def _line_rows(task: TaskSpec, path: str, encoding: str, labelled: bool = True
               ) -> Iterator[tuple[str, dict[str, Any]]]:
    """One row per line: the text, with its label from the parallel labels file, or the `label_from` regex's
    named groups. A line without a labels file or regex is a text alone (predict-file's input); so is, where no
    label is needed, a line the regex doesn't match (TREC's questions without their `LABEL:fine` prefix)."""
    labels_path = task.labels_file_of(path)
    if labels_path:
        yield from _parallel_rows(task, path, labels_path, encoding)
        return
    pattern = re.compile(task.label_from) if task.label_from else None
    text_column = task.text_columns[0]
    with open(path, encoding=encoding) as handle:
        for lineno, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if pattern is None:
                yield f"{path}:{lineno}", {text_column: line}
                continue
            match = pattern.fullmatch(line)
            if match is None and not labelled and len(task.text_columns) == 1:
                yield f"{path}:{lineno}", {text_column: line}
                continue
            if match is None:
                raise UserError(f"{path}:{lineno}: the line does not match task {task.name!r}'s label_from regex "
                                f"'{task.label_from}': {line[:80]!r}" + _plain_text_hint(task, labelled))
            yield f"{path}:{lineno}", {k: v for k, v in match.groupdict().items() if v is not None}


def _plain_text_hint(task: TaskSpec, labelled: bool) -> str:
    """Unlabelled lines are for predict-file, which takes them as they are (for a task of one text)."""
    if labelled and len(task.text_columns) == 1:
        return "; lines without labels are predicted with predict-file"
    return ""


def _parallel_rows(task: TaskSpec, path: str, labels_path: str, encoding: str
                   ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Line n of the text file with line n of the labels file; files of different lengths are refused."""
    if not Path(labels_path).is_file():
        raise UserError(f"task {task.name!r}: labels file {labels_path} not found")
    text_column, label_column = task.text_columns[0], task.label_column
    with open(path, encoding=encoding) as texts, open(labels_path, encoding=encoding) as labels:
        lineno = 0
        for lineno, text in enumerate(texts, 1):
            label = labels.readline()
            if not label:
                count = lineno - 1 + sum(1 for _ in texts) + 1
                raise _misaligned(task, path, count, labels_path, lineno - 1)
            yield f"{path}:{lineno}", {text_column: text.rstrip("\r\n"), label_column: label.strip()}
        extra = sum(1 for _ in labels)
        if extra:
            raise _misaligned(task, path, lineno, labels_path, lineno + extra)


def _misaligned(task: TaskSpec, path: str, texts: int, labels_path: str, labels: int) -> UserError:
    return UserError(f"task {task.name!r}: {path} has {texts} lines but its labels file {labels_path} has {labels}; "
                     "they must be aligned, one item per line")
