"""Reading a decrypted batch payload (Parquet) in bounded memory: the decompression-bomb guard.

A Parquet file is small on disk and large in memory by design (compression, dictionaries), so
a few KiB from a member bank could decode to gigabytes and stop every run ("poison pill").
Nothing is decoded before the file shows it fits the budget, checked in this order:

1. the footer: rows = the header's `row_count`, at most `max_rows`; only flat columns; the
   uncompressed sizes the footer declares for the schema's columns within the budget;
2. the page headers themselves (the footer is the sender's claim; Arrow allocates what each
   page header says): every page of every column read is walked, its uncompressed size added
   up against the budget, and encodings that expand without bound (DELTA_BYTE_ARRAY: each
   value may repeat its predecessor) refused;
3. the read keeps string columns dictionary-encoded (so a dictionary with one long value and
   millions of references stays small), then adds up what they will expand to, and checks
   every string value against `max_string_bytes`, before anything is expanded.

The budget is min(`max_bytes`, rows × `max_row_bytes`). Limits come from the `[limits]` table
of the detection config (aml/enclave/detect/default_config.toml); the defaults below apply when it is
absent. Only the schema's columns are read: extra columns are never decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aml.core.errors import ConfigError, FormatError, TooLargeError


@dataclass(frozen=True)
class PayloadLimits:
    max_rows: int = 20_000_000
    max_bytes: int = 4 << 30  # decoded size of one batch (schema columns)
    max_row_bytes: int = 16 << 10  # decoded size per row, on average
    max_string_bytes: int = 64 << 10  # one string value
    max_pages: int = 1_000_000  # pages and row-group columns walked (bounds the check's own time)

    @classmethod
    def from_config(cls, config=None) -> "PayloadLimits":
        """The `[limits]` table of the detection config (default config when None)."""
        if config is None:
            from aml.enclave.detect.config import DetectionConfig

            config = DetectionConfig.load()
        section = dict(config.section("limits"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"detection config [limits] has unknown key(s): {', '.join(unknown)}")
        values = {}
        for name, value in section.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"detection config [limits] {name} must be a positive integer")
            values[name] = value
        return cls(**values)

    def budget(self, rows: int) -> int:
        return min(self.max_bytes, max(rows, 1) * self.max_row_bytes)


def _budget_text(budget: int, limits: PayloadLimits) -> str:
    # Limits only, never a size measured on the data: messages stay free of anything derived
    # from the rows (the row count is public in the header anyway).
    return f"the budget of {budget} bytes ({limits.max_row_bytes} per row, at most {limits.max_bytes})"


def _too_large(what: str, batch_id: str | None) -> TooLargeError:
    return TooLargeError(f"batch payload refused before decoding: {what}", batch_id=batch_id)


def read_batch_payload(payload: bytes, schema: pa.Schema, expected_rows: int | None,
                       limits: PayloadLimits | None = None, batch_id: str | None = None) -> pa.Table:
    """The payload as a table with exactly `schema`'s columns, or TooLargeError / FormatError
    before anything large is allocated."""
    limits = limits or PayloadLimits()
    try:
        meta = pq.ParquetFile(pa.BufferReader(payload)).metadata  # the footer only
        file_schema = meta.schema.to_arrow_schema()
    except Exception as exc:  # arrow messages can quote file content: never pass them on
        raise FormatError(f"payload is not Parquet ({type(exc).__name__})", batch_id=batch_id) from None
    rows = meta.num_rows
    if expected_rows is not None and rows != expected_rows:
        raise FormatError("row count does not match the header", batch_id=batch_id)
    if rows > limits.max_rows:
        raise _too_large(f"more than {limits.max_rows} rows", batch_id)
    missing = [n for n in schema.names if n not in file_schema.names]
    if missing:
        raise FormatError("payload is not Parquet with the expected columns (KeyError)", batch_id=batch_id)
    for name in schema.names:
        t = file_schema.field(name).type
        if pa.types.is_nested(t) or pa.types.is_dictionary(t) and pa.types.is_nested(t.value_type):
            raise FormatError(f"payload column {name} is nested", batch_id=batch_id)
    if meta.num_row_groups * len(schema.names) > limits.max_pages:
        raise _too_large(f"more than {limits.max_pages} column chunks", batch_id)
    budget = limits.budget(rows)
    fixed = rows * 8 * len(schema.names)  # one value, offset or dictionary index per cell

    # 1. what the footer declares
    index = {meta.schema.column(j).path: j for j in range(meta.num_columns)}
    chunks = [meta.row_group(g).column(index[name]) for g in range(meta.num_row_groups)
              for name in schema.names]
    declared = sum(c.total_uncompressed_size for c in chunks) + fixed
    if declared > budget:
        raise _too_large(f"the footer declares more than {_budget_text(budget, limits)}", batch_id)
    # 2. what the page headers say (what the decoder will allocate)
    pages = _PageWalk(payload, limits.max_pages, batch_id)
    for c in chunks:
        pages.walk(c)
        if pages.uncompressed + fixed > budget:
            raise _too_large(f"its pages hold more than {_budget_text(budget, limits)}", batch_id)

    # 3. read, strings kept as dictionaries; count what they expand to before expanding
    strings = [n for n in schema.names if _is_bytes(schema.field(n).type)]
    try:
        table = pq.ParquetFile(pa.BufferReader(payload), read_dictionary=strings).read(
            columns=schema.names, use_threads=False).select(schema.names)
    except MemoryError:
        raise
    except Exception as exc:
        raise FormatError(f"payload is not Parquet with the expected columns ({type(exc).__name__})",
                          batch_id=batch_id) from None
    expanded = 0
    for name in schema.names:
        col = table.column(name)
        if not _is_bytes(_value_type(col.type)):
            expanded += col.nbytes
            continue
        longest, total = _string_sizes(col)
        if longest > limits.max_string_bytes:
            raise _too_large(f"column {name} has a value over {limits.max_string_bytes} bytes", batch_id)
        expanded += total + 8 * len(col)  # values + offsets
    if expanded > budget:
        raise _too_large(f"its strings expand to more than {_budget_text(budget, limits)}", batch_id)
    try:
        return table.cast(schema)
    except (pa.ArrowException, ValueError) as exc:
        raise FormatError(f"payload is not Parquet with the expected columns ({type(exc).__name__})",
                          batch_id=batch_id) from None


def _is_bytes(t: pa.DataType) -> bool:
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t) or pa.types.is_string_view(t) or pa.types.is_binary_view(t))


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _string_sizes(col: pa.ChunkedArray) -> tuple[int, int]:
    """(longest value, total bytes of every value) of a string column, dictionary or not,
    without expanding a dictionary."""
    longest = total = 0
    for chunk in col.chunks:
        if pa.types.is_dictionary(chunk.type):
            lengths = pc.binary_length(chunk.dictionary)
            used = pc.take(lengths, chunk.indices)
        else:
            lengths = used = pc.binary_length(chunk)
        longest = max(longest, pc.max(lengths).as_py() or 0)
        total += pc.sum(used).as_py() or 0
    return longest, total


# --- the page walk --------------------------------------------------------------------------
# Parquet page headers are Thrift compact-protocol structs (parquet.thrift `PageHeader`):
# 1 type, 2 uncompressed_page_size, 3 compressed_page_size, 4 crc, 5 data_page_header,
# 7 dictionary_page_header, 8 data_page_header_v2; the page's encoding is field 2 of the first
# two and field 4 of v2. Only these are read; every other field is skipped by type.

_DELTA_BYTE_ARRAY = 7
_MAX_HEADER = 16 << 20  # no page header is larger (Arrow's own default limit)


class _PageWalk:
    def __init__(self, data: bytes, max_pages: int, batch_id: str | None):
        self.data = memoryview(data)
        self.max_pages = max_pages
        self.batch_id = batch_id
        self.pages = 0
        self.uncompressed = 0

    def _bad(self, what: str) -> FormatError:
        return FormatError(f"payload has a malformed Parquet page ({what})", batch_id=self.batch_id)

    def walk(self, chunk) -> None:
        """Add up the pages of one column chunk (its byte range as the footer gives it)."""
        start = chunk.data_page_offset
        if chunk.has_dictionary_page and chunk.dictionary_page_offset is not None \
                and 0 < chunk.dictionary_page_offset < start:
            start = chunk.dictionary_page_offset
        end = start + chunk.total_compressed_size
        if start < 4 or end > len(self.data) or chunk.total_compressed_size < 0:
            raise self._bad("column chunk outside the file")
        pos = start
        while pos < end:
            self.pages += 1
            if self.pages > self.max_pages:
                raise TooLargeError(f"batch payload refused before decoding: more than {self.max_pages} pages",
                                    batch_id=self.batch_id)
            header = _Thrift(self.data, pos, min(end, pos + _MAX_HEADER), self._bad)
            page = header.page_header()
            if page["uncompressed"] < 0 or page["compressed"] < 0:
                raise self._bad("negative size")
            if page["encoding"] == _DELTA_BYTE_ARRAY:
                raise self._bad("DELTA_BYTE_ARRAY encoding is not accepted")
            self.uncompressed += page["uncompressed"]
            pos = header.pos + page["compressed"]
        if pos > end:
            raise self._bad("pages overrun their column chunk")


class _Thrift:
    """Just enough of the Thrift compact protocol to read a PageHeader and skip the rest."""

    def __init__(self, data: memoryview, pos: int, end: int, bad):
        self.data, self.pos, self.end, self.bad = data, pos, end, bad
        self.depth = 0

    def byte(self) -> int:
        if self.pos >= self.end:
            raise self.bad("header runs past its column chunk")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise self.bad("varint too long")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def fields(self):
        """(field id, compact type) of each field of the struct at `pos`, up to its STOP."""
        last = 0
        while True:
            b = self.byte()
            if b == 0:
                return
            delta, ftype = b >> 4, b & 0x0F
            fid = last + delta if delta else self.zigzag()
            last = fid
            yield fid, ftype

    def skip(self, ftype: int) -> None:
        if ftype in (1, 2):  # bool (the value is in the type)
            return
        if ftype == 3:
            self.byte()
        elif ftype in (4, 5, 6):
            self.varint()
        elif ftype == 7:
            self.pos += 8
        elif ftype == 8:
            length = self.varint()  # (not `pos += varint()`: pos would be read before the varint)
            self.pos += length
        elif ftype in (9, 10):
            head = self.byte()
            size, etype = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            self._nested(lambda: [self.skip_elem(etype) for _ in range(size)])
        elif ftype == 11:
            size = self.varint()
            if size:
                kv = self.byte()
                self._nested(lambda: [(self.skip_elem(kv >> 4), self.skip_elem(kv & 0x0F)) for _ in range(size)])
        elif ftype == 12:
            self._nested(lambda: [self.skip(t) for _, t in self.fields()])
        else:
            raise self.bad("unknown field type")
        if self.pos > self.end:
            raise self.bad("header runs past its column chunk")

    def skip_elem(self, etype: int) -> None:
        if etype in (1, 2):  # bools inside containers take a byte each
            self.byte()
        else:
            self.skip(etype)

    def _nested(self, fn) -> None:
        self.depth += 1
        if self.depth > 32:
            raise self.bad("header nests too deeply")
        fn()
        self.depth -= 1

    def struct_ints(self, wanted: set[int]) -> dict[int, int]:
        out = {}
        for fid, ftype in self.fields():
            if fid in wanted and ftype == 5:
                out[fid] = self.zigzag()
            else:
                self.skip(ftype)
        return out

    def page_header(self) -> dict:
        page = {"uncompressed": -1, "compressed": -1, "encoding": None, "values": 0}
        for fid, ftype in self.fields():
            if fid in (2, 3) and ftype == 5:
                page["uncompressed" if fid == 2 else "compressed"] = self.zigzag()
            elif fid in (5, 7) and ftype == 12:  # data page v1, dictionary page
                sub = self.struct_ints({1, 2})
                page["values"], page["encoding"] = sub.get(1, 0), sub.get(2)
            elif fid == 8 and ftype == 12:  # data page v2
                sub = self.struct_ints({1, 4})
                page["values"], page["encoding"] = sub.get(1, 0), sub.get(4)
            else:
                self.skip(ftype)
        return page
