"""Column-wise versions of the row helpers (`lookup`, `str`, `label_index`, `float`) over Arrow tables.

A kind's `normalise_arrow` builds its normalised columns from these. Each returns None where some row
would not come out exactly as the row-by-row `normalise` makes it (a bad row, a null, a type whose text
Arrow writes differently): the reader then goes row by row, which names the first bad row's file and line.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Column = pa.ChunkedArray | pa.Array


def find(table: pa.Table, column: str) -> Column | None:
    """`lookup` for every row: a top-level column, else a dotted path through structs and list indices."""
    if column in table.column_names:
        return table.column(column)
    first, *rest = column.split(".")
    if first not in table.column_names or not rest:
        return None
    values: Column = table.column(first)
    for part in rest:
        kind = values.type
        if pa.types.is_struct(kind) and kind.get_field_index(part) >= 0:
            values = pc.struct_field(values, part)
        elif (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and part.isdigit():
            values = pc.list_element(values, int(part))  # ArrowInvalid past a short list: the caller goes row by row
        else:
            return None
    return values


def _stringy(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def text(values: Column | None) -> Column | None:
    """`str(value)` of every row, where Arrow writes the same text: strings and integers, without nulls."""
    if values is None or values.null_count:
        return None
    if _stringy(values.type) or pa.types.is_integer(values.type):
        return values.cast(pa.string())
    return None


def label_indices(values: Column | None, allowed: tuple[str, ...]) -> Column | None:
    """`label_index` of every row: the index of its stripped text in `allowed`, or an integer 0..n-1 as is."""
    if values is None or values.null_count or not allowed:
        return None
    value_set = pa.array(allowed, pa.string())
    if _stringy(values.type):
        indices = pc.index_in(pc.utf8_trim_whitespace(values), value_set=value_set)
    elif pa.types.is_integer(values.type):
        named = pc.index_in(values.cast(pa.string()), value_set=value_set)
        in_range = pc.and_(pc.greater_equal(values, 0), pc.less(values, len(allowed)))
        indices = pc.coalesce(named.cast(pa.int64()),
                              pc.if_else(in_range, values.cast(pa.int64()), pa.scalar(None, pa.int64())))
    else:
        return None
    return None if indices.null_count else indices.cast(pa.int64())


def numbers(values: Column | None) -> Column | None:
    """`float(value)` of every row, if Arrow parses them all and all are finite."""
    if values is None or values.null_count:
        return None
    kind = values.type
    if not (_stringy(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        return None
    floats = values.cast(pa.float64())  # ArrowInvalid on text it can't parse: the caller goes row by row
    return floats if pc.all(pc.is_finite(floats)).as_py() else None


def choice_indices(values: Column | None, counts: Column) -> Column | None:
    """A bare choice index per row (digits, or a non-negative integer), each below the row's choice count."""
    if values is None or values.null_count:
        return None
    if _stringy(values.type):
        stripped = pc.utf8_trim_whitespace(values)
        if not pc.all(pc.match_substring_regex(stripped, r"^[0-9]{1,18}$")).as_py():
            return None
        indices = stripped.cast(pa.int64())
    elif pa.types.is_integer(values.type):
        indices = values.cast(pa.int64())
    else:
        return None
    return indices if below(indices, counts) else None


def below(indices: Column, counts: Column) -> bool:
    """Whether every row's index is in 0..count-1."""
    return bool(pc.all(pc.and_(pc.greater_equal(indices, 0), pc.less(indices, counts))).as_py())


def string_lists(columns: list[Column]) -> pa.ListArray:
    """Row i: [columns[0][i], columns[1][i], ...], as one list<string> array."""
    arrays = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns]
    rows, width = len(arrays[0]), len(arrays)
    order = (np.arange(width)[None, :] * rows + np.arange(rows)[:, None]).ravel()
    values = pc.take(pa.concat_arrays(arrays), pa.array(order))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32)), values)


def string_list(values: Column | None) -> Column | None:
    """A column of lists of strings, without nulls (a JSON list of candidate answers)."""
    if values is None or values.null_count:
        return None
    kind = values.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not _stringy(kind.value_type):
        return None
    if pc.list_flatten(values).null_count:
        return None
    return values.cast(pa.list_(pa.string()))
