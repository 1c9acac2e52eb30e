"""How to read a file: the user's overrides (shape, layout, column mapping, text split, CSV dialect)."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backend.dataset.formats.errors import FormatError

Shape = Literal["text", "prompt_completion", "messages", "preference", "unpaired_preference", "classification"]
LayoutName = Literal[
    "text",
    "jsonl_text",
    "alpaca",
    "sharegpt",
    "openai",
    "prompt_completion",
    "preference",
    "sharegpt_preference",
    "openai_preference",
    "openai_unpaired",
    "sharegpt_unpaired",
    "unpaired_preference",
    "text_label",
    "sentence_label",
]
TextSplit = Literal["file", "paragraph", "line"]
# Fields a source column can be mapped onto (`columns`): the canonical ones and those of the known layouts.
MAPPABLE = (
    "text",
    "label",
    "prompt",
    "completion",
    "system",
    "messages",
    "tools",
    "chosen",
    "rejected",
    "instruction",
    "input",
    "output",
    "history",
    "conversations",
    "sentence",
)


class ReadOptions(BaseModel):
    """Overrides for reading a dataset file; every field left out is detected."""

    model_config = ConfigDict(extra="forbid")

    shape: Shape | None = Field(None, description="Canonical shape to produce; detected when left out.")
    layout: LayoutName | None = Field(None, description="Source layout; detected from the first records.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description='Canonical field → source column or key, e.g. {"prompt": "question", "completion": "answer"}.',
    )
    text_split: TextSplit | None = Field(
        None,
        description="Text files: one document per file, per blank-line block or per line; when left out, chosen "
        "from the head of the file (blocks if blank lines separate its lines, else one per line).",
    )
    quoting: Literal["minimal", "none"] | None = Field(
        None,
        description="CSV/TSV quoting: 'minimal' (csv quoting) or 'none' (quote characters are text); "
        "detected when left out.",
    )
    delimiter: Literal[",", "\t", ";", "|"] | None = Field(
        None, description="CSV/TSV delimiter; a tab for .tsv, else detected from the header."
    )

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, value: dict[str, str]) -> dict[str, str]:
        for target, source in value.items():
            if target not in MAPPABLE:
                raise ValueError(f"cannot map onto '{target}': fields are {', '.join(MAPPABLE)}")
            if not source or len(source) > 200:
                raise ValueError(f"the column for '{target}' must be 1 to 200 characters")
            if not source.isprintable():
                raise ValueError(f"the column for '{target}' has characters a column name cannot have")
        return value

    def effective(self) -> dict[str, Any]:
        """The options as stored with a dataset: only what was set or detected."""
        return self.model_dump(exclude_none=True, exclude_defaults=True)


def parse_options(options: "ReadOptions | dict[str, Any] | None") -> ReadOptions:
    """Options from a dict (the API's JSON), raising `FormatError` naming the bad option."""
    if isinstance(options, ReadOptions):
        return options
    try:
        return ReadOptions.model_validate(options or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in ("options", *first["loc"]))
        raise FormatError(first["msg"], field=where) from None
