"""Apache Parquet tables, read a batch of rows at a time (errors name the 1-based row)."""

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from backend.dataset.formats.errors import FormatError
from backend.dataset.formats.options import ReadOptions
from backend.dataset.formats.source import Source
from backend.dataset.formats.values import nested_too_deeply

SUFFIXES = (".parquet", ".pq")
UNIT = "row"
MAGIC = b"PAR1"
BATCH_ROWS = 1024

Item = tuple[int, object, int]


def sniff(head: bytes, filename: str) -> bool:
    return filename.lower().endswith(SUFFIXES)


def _depth(dtype: pa.DataType) -> int:
    """Nesting depth of a column type (structs, lists and maps each add a level)."""
    if dtype.num_fields == 0:
        return 0
    return 1 + max(_depth(dtype.field(i).type) for i in range(dtype.num_fields))


def read(source: Source, options: ReadOptions) -> Iterator[Item]:
    if not source.head(4).startswith(MAGIC):
        raise FormatError("not a parquet file (no PAR1 magic bytes)", unit=UNIT)
    with source.local_path() as path:
        try:
            table = pq.ParquetFile(path)
            limit = source.limits.max_json_depth
            for column in table.schema_arrow:
                if 1 + _depth(column.type) > limit:
                    raise FormatError(f"column '{column.name}': {nested_too_deeply(limit)}")
            row = 0
            for batch in table.iter_batches(batch_size=BATCH_ROWS):
                for record in batch.to_pylist():
                    row += 1
                    yield row, record, -1
        except FormatError:
            raise
        except (pa.ArrowException, OSError, ValueError, LookupError, TypeError) as exc:  # a corrupt file, any way
            raise FormatError(f"not a readable parquet file: {exc}") from None
