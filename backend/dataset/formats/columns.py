"""Source columns a layout leaves unread: each one named in a warning, with what to do about it.

A column the layout does not read never reaches training. That is right for an `id`, and wrong for a `label`
that marks answers as undesirable (they would be trained as targets) or a `response` that was meant to be the
completion. So no column is dropped without a word: metadata columns are listed once, every other column gets a
warning of its own with a suggested mapping where one is known.
"""

from collections import Counter
from typing import Any

from backend.dataset.formats.errors import FormatError
from backend.dataset.formats.layouts import LAYOUTS, Layout, desirable

MAX_TRACKED = 200  # distinct unread keys counted per file; a file with more is named by its first ones
# Columns that describe a record rather than hold training text: listed together, as harmless.
METADATA = frozenset(
    {
        "id",
        "_id",
        "idx",
        "index",
        "uuid",
        "key",
        "source",
        "dataset",
        "origin",
        "split",
        "url",
        "lang",
        "language",
        "license",
        "meta",
        "metadata",
        "category",
        "task",
        "tags",
        "model",
        "timestamp",
        "created_at",
        "hash",
    }
)
# Common names for canonical fields: such a column next to a layout that reads the field can be mapped onto it.
SYNONYMS = {
    "completion": ("response", "answer", "output", "target", "reply", "assistant"),
    "prompt": ("question", "query", "input", "instruction", "user"),
    "text": ("content", "document", "body", "passage"),
    "system": ("system_prompt", "system_message"),
}
# Names under which a desirable/undesirable flag comes; `label` is the one the unpaired layouts read.
FLAGS = ("label", "kto_label", "desirable", "is_desirable", "thumbs_up", "rating_binary")
UNPAIRED = (
    "looks like unpaired preference (each answer marked desirable or not): read this way the undesirable answers "
    "would be trained as targets. Leave options.layout and options.shape out (or set options.shape to "
    "unpaired_preference) to read it as shape unpaired_preference, and train with objective kto"
)


class Unread(Counter[str]):
    """Keys a layout left unread → how many records hold something under them; `not_flags`: the ones named like
    a desirable/undesirable flag whose values are not all true/false (a category, a score: no KTO advice)."""

    def __init__(self) -> None:
        super().__init__()
        self.not_flags: set[str] = set()


def count_unread(unread: Unread, obj: dict[str, Any], layout: Layout) -> None:
    """Count the keys of one (remapped) record that `layout` does not read and that hold something."""
    for key, value in obj.items():
        unread_value = key not in layout.reads and value is not None and value != ""
        if unread_value and (key in unread or len(unread) < MAX_TRACKED):
            unread[key] += 1
            if key.lower() in FLAGS and key not in unread.not_flags and not _is_flag(value):
                unread.not_flags.add(key)


def _is_flag(value: Any) -> bool:
    try:
        desirable(value)
    except FormatError:
        return False
    return True


def advice(column: str, layout: Layout, *, flags: bool = True) -> str:
    """What to do about a column `layout` leaves unread (`flags`: its values are all true/false)."""
    name = column.lower()
    if flags and name in FLAGS and "unpaired_preference" not in layout.shapes and _conversational(layout):
        mapped = "" if name == "label" else f', with it mapped onto label: options.columns {{"label": "{column}"}}'
        return UNPAIRED + mapped
    if name in FLAGS and not flags:
        return "its values are not all true/false, so this is no unpaired preference data: not trained on"
    for target, names in SYNONYMS.items():
        if name in names and target in layout.reads:
            instead = f" in place of the current '{target}'" if target in layout.keys else ""
            return f'to train on it, map it{instead}: options.columns {{"{target}": "{column}"}}'
    readers = [other.name for other in LAYOUTS.values() if column in other.keys and other is not layout]
    if readers:
        return f"layout {readers[0]} reads it (options.layout), or map it with options.columns"
    return "not trained on; if it holds training text, map it onto a field with options.columns"


def _conversational(layout: Layout) -> bool:
    return bool({"messages", "prompt_completion", "preference"} & set(layout.shapes))


def column_warnings(unread: Unread, layout: Layout, columns: dict[str, str], records: int) -> list[dict[str, Any]]:
    """One warning per unread column (metadata ones together), named as in the file (`columns`: the mapping)."""
    metadata = sorted(k for k in unread if k.lower() in METADATA and k not in columns)
    out: list[dict[str, Any]] = []
    if metadata:
        out.append(_warning(None, "ignored_columns", f"not trained on (metadata, harmless): {', '.join(metadata)}"))
    for key, count in unread.most_common():
        if key in metadata:
            continue
        shown = f"'{columns[key]}' (mapped to '{key}')" if key in columns else f"'{key}'"
        share = f"{count} of {records} records" if records else f"{count} records"
        what = advice(key, layout, flags=key not in unread.not_flags)
        message = f"column {shown} is not read by layout {layout.name} ({share}): {what}"
        out.append(_warning(columns.get(key, key), "unused_column", message))
    return out


def mapping_hint(keys: list[str]) -> str:
    """A suggested options.columns for records no layout reads, from column names ('' when none is known)."""
    pairs: dict[str, str] = {}
    for target, names in SYNONYMS.items():
        found = next((k for k in keys if k.lower() in names and k not in pairs.values()), None)
        if found is not None and target not in keys:
            pairs[target] = found
    if not pairs:
        return ""
    return ", e.g. {" + ", ".join(f'"{t}": "{c}"' for t, c in pairs.items()) + "}"


def _warning(field: str | None, code: str, message: str) -> dict[str, Any]:
    return {"line": None, "field": field, "message": message, "code": code}
