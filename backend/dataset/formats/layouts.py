"""Source layouts (alpaca, ShareGPT, OpenAI messages, ...) and their mapping onto the canonical shapes.

A layout is recognized by the keys of a record; each converts one parsed record into one canonical record of
a shape, raising `FormatError` naming the field. Canonical shapes (records are dicts):
  text               {"text"}
  prompt_completion  {"prompt", "completion", optional "system"}
  messages           {"messages": [{"role", "content", optional "weight"/"tool_calls"/"name"}], optional "tools"}
  preference         {"prompt", "chosen", "rejected"}: strings, or all message lists
  unpaired_preference  {"prompt", "completion", "label": bool}: strings, or both message lists (TRL's unpaired
                     preference format, for KTO: one answer per record, desirable or not)
  classification     {"text", "label": str | int}
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backend.dataset.formats import chat
from backend.dataset.formats.errors import FormatError

Record = dict[str, Any]
INTEGER = re.compile(r"-?\d{1,18}")


@dataclass(frozen=True)
class Layout:
    name: str
    keys: tuple[str, ...]  # the fields that identify it
    shapes: tuple[str, ...]  # the shapes it can be read as, the usual one first
    convert: Callable[[dict[str, Any], str], Record]
    optional: tuple[str, ...] = ()  # other fields it reads when present; every other field is left unread

    @property
    def reads(self) -> tuple[str, ...]:
        return self.keys + self.optional


def _nonempty(value: Any, field: str) -> str:
    text = chat.text_of(value, field)
    if not text.strip():
        raise FormatError(f"empty {field}", field=field)
    return text


def _prompt_completion(prompt: str, completion: str, system: str, shape: str) -> Record:
    if shape == "messages":
        head = [{"role": "system", "content": system}] if system.strip() else []
        return {"messages": [*head, {"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]}
    record = {"prompt": prompt, "completion": completion}
    if system.strip():
        record["system"] = system
    return record


def text_records(obj: dict[str, Any], shape: str) -> Record:
    return {"text": _nonempty(obj.get("text"), "text")}


def alpaca(obj: dict[str, Any], shape: str) -> Record:
    instruction = _nonempty(obj.get("instruction"), "instruction")
    extra = chat.text_of(obj.get("input"), "input", required=False)
    output = _nonempty(obj.get("output"), "output")
    system = chat.text_of(obj.get("system"), "system", required=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    history = _history(obj.get("history"))
    if history and shape != "messages":
        raise FormatError("earlier turns need the 'messages' shape (options.shape)", field="history")
    record = _prompt_completion(prompt, output, system, shape)
    if history:
        turns = [{"role": r, "content": c} for q, a in history for r, c in (("user", q), ("assistant", a))]
        at = 1 if record["messages"][0]["role"] == "system" else 0
        record["messages"][at:at] = turns
    return record


def _history(value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise FormatError(
            f"expected a list of [instruction, response] pairs, got {type(value).__name__}", field="history"
        )
    pairs = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise FormatError("expected an [instruction, response] pair of strings", field=f"history[{i}]")
        pairs.append((pair[0], pair[1]))
    return pairs


def prompt_completion(obj: dict[str, Any], shape: str) -> Record:
    prompt = chat.text_of(obj.get("prompt"), "prompt")
    completion = _nonempty(obj.get("completion"), "completion")
    system = chat.text_of(obj.get("system"), "system", required=False)
    return _prompt_completion(prompt, completion, system, shape)


def openai(obj: dict[str, Any], shape: str) -> Record:
    return _with_tools({"messages": chat.messages(obj.get("messages"), "messages")}, obj)


def sharegpt(obj: dict[str, Any], shape: str) -> Record:
    return _with_tools({"messages": chat.sharegpt(obj.get("conversations"), "conversations", obj.get("system"))}, obj)


def _with_tools(record: Record, obj: dict[str, Any]) -> Record:
    tools = chat.tools(obj.get("tools"))
    if tools:
        record["tools"] = tools
    return record


def preference(obj: dict[str, Any], shape: str) -> Record:
    raw = obj.get("prompt")
    prompt = chat.messages(raw, "prompt") if isinstance(raw, list) else chat.text_of(raw, "prompt")
    sides = {key: _side(obj.get(key), key, chat.message) for key in ("chosen", "rejected")}
    return _consistent(prompt, sides)


def openai_preference(obj: dict[str, Any], shape: str) -> Record:
    """OpenAI's DPO format: {"input": {"messages"}, "preferred_output": [...], "non_preferred_output": [...]}."""
    given = obj.get("input")
    if not isinstance(given, dict):
        raise FormatError("expected an object with 'messages'", field="input")
    if chat.tools(given.get("tools"), "input.tools"):
        # Preference records carry no tool definitions: training without them would teach calls to tools it never saw.
        raise FormatError("tool definitions in a DPO record are not supported here", field="input.tools")
    prompt = chat.messages(given.get("messages"), "input.messages")
    answers = {"preferred_output": "chosen", "non_preferred_output": "rejected"}
    sides = {ours: _side(obj.get(theirs), theirs, chat.message) for theirs, ours in answers.items()}
    return _consistent(prompt, sides)


def sharegpt_preference(obj: dict[str, Any], shape: str) -> Record:
    prompt = chat.sharegpt(obj.get("conversations"), "conversations", obj.get("system"))
    sides = {key: _side(obj.get(key), key, chat.sharegpt_turn) for key in ("chosen", "rejected")}
    return _consistent(prompt, sides)


def _side(value: Any, field: str, turn: Callable[[Any, str], chat.Message]) -> str | list[chat.Message]:
    """One answer of a pair: a string, one message, or a list of messages."""
    if isinstance(value, dict):
        return [turn(value, field)]
    if isinstance(value, list):
        if not value:
            raise FormatError("empty conversation", field=field)
        return [turn(m, f"{field}[{i}]") for i, m in enumerate(value)]
    return _nonempty(value, field)


def _consistent(prompt: str | list[chat.Message], sides: dict[str, str | list[chat.Message]]) -> Record:
    """Strings stay strings; when any part is a conversation, all become message lists."""
    if isinstance(prompt, str) and all(isinstance(s, str) for s in sides.values()):
        return {"prompt": prompt, **sides}
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    as_lists = {k: [{"role": "assistant", "content": s}] if isinstance(s, str) else s for k, s in sides.items()}
    return {"prompt": prompt, **as_lists}


def label(value: Any) -> str | int:
    """A class label: an integer, or a string (integers written as text become integers)."""
    if value is None:
        raise FormatError("missing", field="label")
    if type(value) is int:
        return value
    if not isinstance(value, str):
        raise FormatError(f"expected a string or integer label, got {type(value).__name__}", field="label")
    value = value.strip()
    if not value:
        raise FormatError("empty label", field="label")
    return int(value) if INTEGER.fullmatch(value) else value


# A desirable/undesirable flag as people write it: JSON booleans, 0/1, or the words (CSV cells are strings).
FLAGS = {"true": True, "false": False, "1": True, "0": False}


def desirable(value: Any) -> bool:
    """An unpaired preference label: true (a desirable answer) or false (an undesirable one)."""
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in FLAGS:
        return FLAGS[value.strip().lower()]
    shown = repr(value)[:40] if value is not None else "missing"
    raise FormatError(
        f"expected true or false (or 1/0) marking the answer desirable or not, got {shown}. A label of another "
        "kind: set options.shape to messages or prompt_completion to train on the answers without it; text with "
        "class labels is a classification dataset (fields 'text' and 'label')",
        field="label",
    )


def _split_final_answer(conversation: list[chat.Message], field: str) -> tuple[list[chat.Message], list[chat.Message]]:
    """(prompt, completion) of a conversation: everything before its final assistant turn, and that turn."""
    if conversation[-1]["role"] != "assistant":
        raise FormatError(
            "the conversation must end with the assistant turn that the label rates",
            field=f"{field}[{len(conversation) - 1}].role",
        )
    if len(conversation) < 2:
        raise FormatError("needs a prompt before the rated assistant turn", field=field)
    return conversation[:-1], conversation[-1:]


def openai_unpaired(obj: dict[str, Any], shape: str) -> Record:
    prompt, completion = _split_final_answer(chat.messages(obj.get("messages"), "messages"), "messages")
    record = {"prompt": prompt, "completion": completion, "label": desirable(obj.get("label"))}
    return _with_tools(record, obj)


def sharegpt_unpaired(obj: dict[str, Any], shape: str) -> Record:
    turns = chat.sharegpt(obj.get("conversations"), "conversations", obj.get("system"))
    prompt, completion = _split_final_answer(turns, "conversations")
    record = {"prompt": prompt, "completion": completion, "label": desirable(obj.get("label"))}
    return _with_tools(record, obj)


def unpaired_preference(obj: dict[str, Any], shape: str) -> Record:
    raw = obj.get("prompt")
    prompt = chat.messages(raw, "prompt") if isinstance(raw, list) else chat.text_of(raw, "prompt")
    completion = _side(obj.get("completion"), "completion", chat.message)
    flag = desirable(obj.get("label"))
    system = chat.text_of(obj.get("system"), "system", required=False)
    if system.strip():  # the format has no system field: a system prompt makes the prompt a conversation
        head = [{"role": "system", "content": system}]
        prompt = head + (prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}])
    both = _consistent(prompt, {"completion": completion})  # strings stay strings, else both become messages
    return _with_tools({"prompt": both["prompt"], "completion": both["completion"], "label": flag}, obj)


def text_label(obj: dict[str, Any], shape: str) -> Record:
    return {"text": _nonempty(obj.get("text"), "text"), "label": label(obj.get("label"))}


def sentence_label(obj: dict[str, Any], shape: str) -> Record:
    return {"text": _nonempty(obj.get("sentence"), "sentence"), "label": label(obj.get("label"))}


# Most specific first: a record is of the first layout whose keys it has.
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "sharegpt_preference",
            ("conversations", "chosen", "rejected"),
            ("preference",),
            sharegpt_preference,
            ("system",),
        ),
        Layout("preference", ("prompt", "chosen", "rejected"), ("preference",), preference),
        Layout(
            "openai_preference",
            ("input", "preferred_output", "non_preferred_output"),
            ("preference",),
            openai_preference,
        ),
        Layout(
            "sharegpt_unpaired",
            ("conversations", "label"),
            ("unpaired_preference",),
            sharegpt_unpaired,
            ("system", "tools"),
        ),
        Layout("openai_unpaired", ("messages", "label"), ("unpaired_preference",), openai_unpaired, ("tools",)),
        Layout(
            "unpaired_preference",
            ("prompt", "completion", "label"),
            ("unpaired_preference",),
            unpaired_preference,
            ("system", "tools"),
        ),
        Layout("sharegpt", ("conversations",), ("messages",), sharegpt, ("system", "tools")),
        Layout("openai", ("messages",), ("messages",), openai, ("tools",)),
        Layout(
            "alpaca",
            ("instruction", "output"),
            ("prompt_completion", "messages"),
            alpaca,
            ("input", "system", "history"),
        ),
        Layout(
            "prompt_completion",
            ("prompt", "completion"),
            ("prompt_completion", "messages"),
            prompt_completion,
            ("system",),
        ),
        Layout("text_label", ("text", "label"), ("classification",), text_label),
        Layout("sentence_label", ("sentence", "label"), ("classification",), sentence_label),
        Layout("jsonl_text", ("text",), ("text",), text_records),
    )
}
# Raw text files have a layout of their own: their reader already yields {"text": ...}.
RAW_TEXT = Layout("text", (), ("text",), text_records, ("text",))


def identify(obj: Any, shape: str | None = None) -> str | None:
    """The layout a record looks like (among those that read as `shape`, when given), or None."""
    if not isinstance(obj, dict):
        return None
    for layout in LAYOUTS.values():
        if all(key in obj for key in layout.keys) and (shape is None or shape in layout.shapes):
            return layout.name
    return None


def usual_shape(layout: Layout, columns: list[str]) -> str:
    """The shape a layout is read as when none is asked for (alpaca with `history` becomes messages)."""
    if layout.name == "alpaca" and "history" in columns:
        return "messages"
    return layout.shapes[0]


def remap(obj: Any, columns: dict[str, str]) -> Any:
    """`obj` with source keys renamed onto canonical fields (`columns`: canonical field → source key)."""
    if not columns or not isinstance(obj, dict):
        return obj
    out = dict(obj)
    for source in columns.values():
        out.pop(source, None)
    for target, source in columns.items():
        if source not in obj:
            raise FormatError(f"missing (mapped to '{target}')", field=source)
        out[target] = obj[source]
    return out


def describe() -> str:
    return ", ".join("+".join(layout.keys) for layout in LAYOUTS.values())
