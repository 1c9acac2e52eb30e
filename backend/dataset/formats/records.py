"""Canonical record shapes and the mapping of JSON layouts onto them."""

from typing import Any

Record = dict[str, str]

# layout → canonical shape
SHAPES = {"text": "text", "jsonl_text": "text", "alpaca": "prompt_completion"}


class FormatError(ValueError):
    """A problem in an uploaded file, located by line (1-based) and field."""

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None) -> None:
        where = f"line {line}: " if line is not None else ""
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}{what}{message}")
        self.message, self.line, self.field = message, line, field


def layout_of(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    if "text" in obj:
        return "jsonl_text"
    return None


def _string(obj: dict[str, Any], key: str, line: int, *, required: bool = True) -> str:
    if key not in obj:
        if required:
            raise FormatError("missing", line=line, field=key)
        return ""
    value = obj[key]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise FormatError(f"expected a string, got {type(value).__name__}", line=line, field=key)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800": valid JSON, not valid text
        raise FormatError("invalid unicode (lone surrogate escape)", line=line, field=key) from None
    return value


def to_record(obj: Any, layout: str, line: int) -> Record:
    """Map one parsed JSON object of `layout` to its canonical record, or raise naming line and field."""
    if not isinstance(obj, dict):
        raise FormatError(f"expected a JSON object, got {type(obj).__name__}", line=line)
    if layout == "jsonl_text":
        value = _string(obj, "text", line)
        if not value.strip():
            raise FormatError("empty text", line=line, field="text")
        return {"text": value}
    instruction = _string(obj, "instruction", line)
    extra = _string(obj, "input", line, required=False)
    output = _string(obj, "output", line)
    if not instruction.strip():
        raise FormatError("empty instruction", line=line, field="instruction")
    if not output.strip():
        raise FormatError("empty output", line=line, field="output")
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return {"prompt": prompt, "completion": output}
