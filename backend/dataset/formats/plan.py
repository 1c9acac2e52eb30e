"""How a file will be read: its reader (by file type), its layout and shape (detected or given), and the
canonical records that come out of it."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from backend.dataset.formats import csv_table, json_array, jsonl, parquet, text
from backend.dataset.formats.columns import Unread, count_unread, mapping_hint
from backend.dataset.formats.errors import FormatError, UnsupportedFile
from backend.dataset.formats.layouts import LAYOUTS, RAW_TEXT, Layout, Record, describe, identify, remap, usual_shape
from backend.dataset.formats.options import ReadOptions
from backend.dataset.formats.source import Source
from backend.dataset.formats.values import clean_name, display

# File type → reader module (`SUFFIXES`, `UNIT`, `sniff`, `read`). Order matters: the first that sniffs reads.
READERS: dict[str, ModuleType] = {
    "jsonl": jsonl,
    "json": json_array,
    "csv": csv_table,
    "parquet": parquet,
    "text": text,
}
ACCEPTED = ".txt, .md, .json, .jsonl, .csv, .tsv and .parquet, each also gzipped (.gz)"
DETECT_RECORDS = 50  # records looked at to detect the layout
SAMPLE_ROWS = 5
MAX_COLUMNS = 200

# One record out of a plan: (line or row, canonical record or the error found in it, size in bytes or -1).
Item = tuple[int, Record | FormatError, int]


@dataclass
class Plan:
    source: Source
    reader: str
    layout: Layout | None
    shape: str
    options: ReadOptions  # effective: what was given plus what was detected
    confidence: float = 1.0
    columns: list[str] = field(default_factory=list)
    sample: list[dict[str, Any]] = field(default_factory=list)
    problem: FormatError | None = None  # why the records cannot be read (no layout fits, bad options)
    notes: list[str] = field(default_factory=list)  # how detection decided what it did, for the inspect step

    @property
    def unit(self) -> str:
        return str(READERS[self.reader].UNIT)


def readers_for(filename: str) -> list[str]:
    """The readers that may read a file of this name (by extension, `.gz` looked through); UnsupportedFile if none."""
    name = filename.lower()
    name = name[:-3] if name.endswith(".gz") else name
    found = [reader for reader, module in READERS.items() if name.endswith(module.SUFFIXES)]
    if not found:
        kind = f"'{name[name.rfind('.') :]}'" if "." in name else "without an extension"
        raise UnsupportedFile(f"unsupported file type {kind}: accepted are {ACCEPTED}")
    return found


def check_options_for(filename: str, options: ReadOptions) -> None:
    """Refuse options that cannot apply to a file of this name, before any of its bytes arrive."""
    readers = readers_for(filename)
    if options.text_split is not None and "text" not in readers:
        raise FormatError("applies to .txt and .md files only", field="options.text_split")
    for key in ("quoting", "delimiter"):
        if getattr(options, key) is not None and "csv" not in readers:
            raise FormatError("applies to .csv and .tsv files only", field=f"options.{key}")
    if readers == ["text"] and (options.layout not in (None, "text") or options.shape not in (None, "text")):
        raise FormatError("a text file is read as shape 'text' (layout 'text')", field="options")


def pick_reader(source: Source) -> str:
    readers_for(source.name)
    head = source.head()
    if not head.strip(b"\xef\xbb\xbf \t\r\n"):
        raise FormatError("the file is empty", line=1)
    return next(reader for reader, module in READERS.items() if module.sniff(head, source.name))


def make_plan(source: Source, options: ReadOptions, *, detect: bool = True) -> Plan:
    """Pick the reader, fill in what the options leave open, and detect the layout from the first records."""
    reader = pick_reader(source)
    if reader == "csv":
        head = source.head()
        delimiter = options.delimiter or csv_table.delimiter_of(head, source.name)
        options = options.model_copy(
            update={"delimiter": delimiter, "quoting": options.quoting or csv_table.quoting_of(head, delimiter)}
        )
    if reader == "text":
        return _text_plan(source, options)
    if options.text_split is not None:
        raise FormatError("applies to .txt and .md files only", field="options.text_split")
    if not detect and options.layout and options.shape:
        return Plan(source, reader, layout_named(options.layout), options.shape, options)
    return _detect(Plan(source, reader, None, "", options))


def _text_plan(source: Source, options: ReadOptions) -> Plan:
    if options.layout not in (None, "text") or options.shape not in (None, "text") or options.columns:
        raise FormatError("a text file is read as shape 'text' (layout 'text'), without columns", field="options")
    if options.quoting or options.delimiter:
        raise FormatError("applies to .csv and .tsv files only", field="options")
    split, why = (options.text_split, "") if options.text_split else text.choose_split(source)
    effective = options.model_copy(update={"layout": "text", "shape": "text", "text_split": split})
    return Plan(source, "text", RAW_TEXT, "text", effective, notes=[why] if why else [])


def _detect(plan: Plan) -> Plan:
    """Layout, shape and confidence from the first records; the columns and a few raw rows for the mapping UI.

    When no layout fits, `problem` says why (the columns and rows are still there, to map them)."""
    objects, first_line = _first_records(plan)
    try:
        return _detect_from(plan, objects, first_line)
    except FormatError as exc:
        plan.problem = exc
        return plan


def _detect_from(plan: Plan, objects: list[dict[str, Any]], first_line: int) -> Plan:
    options = plan.options
    columns: dict[str, None] = {}
    for obj in objects:
        columns.update((clean_name(str(k)), None) for k in list(obj)[:MAX_COLUMNS])
    plan.columns = list(columns)[:MAX_COLUMNS]
    plan.sample = [display(obj) for obj in objects[:SAMPLE_ROWS]]
    for target, source_key in options.columns.items():
        if objects and source_key not in columns:
            raise FormatError(
                f"no column '{source_key}' in the file (columns: {', '.join(plan.columns[:30])})",
                field=f"options.columns.{target}",
            )
    try:
        mapped = [remap(obj, options.columns) for obj in objects]
    except FormatError:
        mapped = objects
    layout = _choose_layout(mapped, options, first_line)
    if layout is None:  # no record could be read at all: the main pass reports why
        plan.layout, plan.shape = None, options.shape or ""
        return plan
    shape = options.shape or usual_shape(layout, [key for obj in mapped for key in obj])
    if shape not in layout.shapes:
        raise FormatError(
            f"layout '{layout.name}' reads as {' or '.join(layout.shapes)}, not '{shape}'", field="options.shape"
        )
    plan.layout, plan.shape = layout, shape
    plan.options = options.model_copy(update={"layout": layout.name, "shape": shape})
    plan.confidence = _confidence(mapped, layout, shape, given=options.layout is not None, asked=options.shape)
    return plan


def _first_records(plan: Plan) -> tuple[list[dict[str, Any]], int]:
    """Up to DETECT_RECORDS parsed objects from the start of the file (errors are left to the main pass)."""
    objects: list[dict[str, Any]] = []
    first_line = 1
    items = READERS[plan.reader].read(plan.source, plan.options)
    try:
        for line, value, _ in items:
            if isinstance(value, dict):
                first_line = first_line if objects else line
                objects.append(value)
                if len(objects) >= DETECT_RECORDS:
                    break
    except FormatError as exc:
        if type(exc) is not FormatError:  # a limit, or an unsupported file: no point reading on
            raise
    finally:
        items.close()  # type: ignore[attr-defined]
    return objects, first_line


def layout_named(name: str) -> Layout:
    """A layout by name; 'text' (raw text) reads a record's `text` field like 'jsonl_text'."""
    return RAW_TEXT if name == "text" else LAYOUTS[name]


def _choose_layout(objects: list[dict[str, Any]], options: ReadOptions, first_line: int) -> Layout | None:
    if options.layout:
        return layout_named(options.layout)
    if not objects:
        return None
    votes: dict[str, int] = {}
    for obj in objects:
        # With a shape asked for, a record counts for the most specific layout that reads as it: messages with a
        # `label` asked as 'messages' are openai records (the label then named as unread).
        name = identify(obj, options.shape)
        if name:
            votes[name] = votes.get(name, 0) + 1
    if votes:
        return LAYOUTS[max(LAYOUTS, key=lambda name: (votes.get(name, 0), -list(LAYOUTS).index(name)))]
    wanted = f" as shape '{options.shape}'" if options.shape else ""
    found = ", ".join(list(dict.fromkeys(k for obj in objects for k in obj))[:20]) or "none"
    hint = mapping_hint(list(dict.fromkeys(k for obj in objects for k in obj)))
    raise FormatError(
        f"records need a 'text' field, or the fields of another layout{wanted} ({describe()}); "
        f"these have: {clean_name(found, 300)}. Map your columns with options.columns{hint}",
        line=first_line,
    )


def _confidence(
    objects: list[dict[str, Any]], layout: Layout, shape: str, *, given: bool, asked: str | None = None
) -> float:
    """The share of the first records that look like `layout` (as shape `asked`) and read without error."""
    if not objects:
        return 1.0
    good = 0
    for obj in objects:
        if not given and identify(obj, asked) != layout.name:
            continue
        try:
            layout.convert(obj, shape)
        except FormatError:
            continue
        good += 1
    return round(good / len(objects), 2)


def canonical(plan: Plan, unread: Unread | None = None) -> Iterator[Item]:
    """Every record of the file as its canonical record, or the error found in it.

    `unread`, when given, counts the fields (after the column mapping) that the layout leaves unread."""
    unit, columns, shape = plan.unit, plan.options.columns, plan.shape
    layout = plan.layout
    for line, value, size in READERS[plan.reader].read(plan.source, plan.options):
        if isinstance(value, FormatError):
            yield line, value.at(line, unit), size
            continue
        try:
            obj = remap(value, columns) if columns else value
            if not isinstance(obj, dict):
                raise FormatError(f"expected a JSON object (one record), got {type(obj).__name__}")
            if layout is None:
                raise FormatError(f"records need the fields of a known layout ({describe()})")
            record = layout.convert(obj, shape)
            if unread is not None:
                count_unread(unread, obj, layout)
        except FormatError as exc:
            yield line, exc.at(line, unit), size
            continue
        yield line, record, size
