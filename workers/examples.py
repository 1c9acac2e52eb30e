"""Canonical records → what the trainer sees: token ids, which of them carry loss, and which role wrote each.

The training recipes and the dataset analyses (statistics, dry run) both go through `render_record`, so a
dry run shows exactly what training uses. Per shape, for objective `sft`:

- prompt_completion (and classification: text → label): the prompt as the model will see it at inference
  (its chat template, else Alpaca), then the completion, the template's end-of-turn marker and EOS, which
  carry the loss.
- messages (and preference: the prompt followed by the chosen answer): the conversation through the base's
  chat template, or ChatML closed by the base's EOS when it has none. Loss on assistant turns only, each with
  its end-of-turn marker, except turns with `weight: 0`; EOS follows the final assistant turn's marker.

So both shapes end an answer the same way, marker then EOS: when a template's marker is not EOS
(`<|im_end|>` vs `<|endoftext|>`), generation stops whichever of the two the inference stack stops on.

Tool calling. A conversation may carry tool definitions (`tools`), assistant turns with `tool_calls` (OpenAI's
form, see backend/dataset/formats/chat.py) and `tool` turns with their results. A base template that renders
both (a probe conversation with a tool and a call shows both names, e.g. Qwen's or Llama 3.1's) gets them as
they are, arguments as objects. Any other template is wrapped in `TOOL_FALLBACK`, a Jinja prologue that first
rewrites the conversation into plain turns: the definitions become a `<tools>` block in the system turn (a
system turn of its own when there is none), each call becomes `<tool_call>{"name": ..., "arguments": ...}
</tool_call>` in its assistant turn's text, results stay `tool` turns; then the base template renders those
turns as it renders any others. The rewrite happens only when the conversation has tools or calls, so every
other conversation renders exactly as before. The wrapped template (`training_template`) is what the trained
artifact's tokenizer is saved with (workers/artifacts.py), so inference lays tools out as training did.
Loss: a call is the text of an assistant turn and is trained with it; tool results, like every non-assistant
turn, never are.

For objective `causal_lm` every record becomes one text (`causal_text`) whose every token, EOS included,
carries loss; the recipes pack those texts into blocks.
"""

import json
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

IGNORE_INDEX = -100
# Used when the base tokenizer has no chat template: the prompt format most instruction datasets were made for.
ALPACA_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
# The system text that lists the tools when the base template has no place for them (Hermes' and Qwen's wording
# and tags, which many instruction-tuned models have already seen).
TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query. For each call, write "
    '<tool_call>{"name": <function-name>, "arguments": <args-json-object>}</tool_call>. '
    "These are the functions you can call:\n<tools>"
)
# The prologue put in front of a template that ignores tools (see the module docstring). Written for Jinja as
# transformers runs it (immutable sandbox: new lists by concatenation, state carried out of loops in a
# namespace); `tojson` is transformers' json.dumps, non-ASCII kept. Arguments given as a string are written as
# they are (they are JSON already).
TOOL_FALLBACK = (
    "{%- set tool_ns = namespace(calls=false, messages=[], text='', skip=0) %}"
    "{%- for message in messages %}{%- if message['tool_calls'] %}{%- set tool_ns.calls = true %}{%- endif %}"
    "{%- endfor %}"
    "{%- if tools or tool_ns.calls %}"
    "{%- if tools %}"
    "{%- set tool_ns.text = '" + TOOLS_INTRO.replace("\n", "\\n") + "' %}"
    "{%- for tool in tools %}{%- set tool_ns.text = tool_ns.text ~ '\\n' ~ (tool | tojson) %}{%- endfor %}"
    "{%- set tool_ns.text = tool_ns.text ~ '\\n</tools>' %}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set tool_ns.text = messages[0]['content'] ~ '\\n\\n' ~ tool_ns.text %}{%- set tool_ns.skip = 1 %}"
    "{%- endif %}"
    "{%- set tool_ns.messages = [{'role': 'system', 'content': tool_ns.text}] %}"
    "{%- endif %}"
    "{%- for message in messages[tool_ns.skip:] %}"
    "{%- set tool_ns.text = message['content'] if message['content'] is string else '' %}"
    "{%- for call in message['tool_calls'] or [] %}"
    "{%- set function = call['function'] if call['function'] is mapping else call %}"
    "{%- set arguments = function['arguments'] if function['arguments'] is string "
    "else (function['arguments'] | tojson) %}"
    "{%- set tool_ns.text = tool_ns.text ~ ('\\n' if tool_ns.text else '') ~ '<tool_call>\\n{\"name\": ' "
    "~ (function['name'] | tojson) ~ ', \"arguments\": ' ~ arguments ~ '}\\n</tool_call>' %}"
    "{%- endfor %}"
    "{%- set tool_ns.messages = tool_ns.messages + [{'role': message['role'], 'content': tool_ns.text}] %}"
    "{%- endfor %}"
    "{%- set messages = tool_ns.messages %}{%- set tools = none %}"
    "{%- endif %}"
)
# For conversations on a base without a chat template: ChatML's layout, but every turn ends with the base's
# own EOS instead of <|im_end|>. The base's vocabulary has no <|im_end|> token (adding one would mean training
# new embedding rows, which LoRA does not do), and ending the assistant's turn with EOS is what makes
# generation stop there. Tools and calls go through the fallback prologue.
CHATML_TEMPLATE = TOOL_FALLBACK + (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

Example = dict[str, list[int]]
Message = dict[str, Any]
# An assistant answer no template alters: what a template writes after it is its end-of-turn marker.
_ANSWER_PROBE = "ANSWERPROBE7f3c"


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a base model directory, with a pad token (training and analyses load it alike)."""
    # A missing directory would otherwise be taken for a Hub repo id; base models are only ever local.
    if not path.is_dir():
        raise FileNotFoundError(f"base model directory {path} does not exist (moved or deleted?)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer in {path} has no EOS token; cannot mark where a response ends")
    if tokenizer.pad_token_id is None:
        # Safe because padded positions get label -100 and attention mask 0 from the collator, never
        # "label == pad": the real EOS at the end of each response is still learned.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class Rendered:
    """One record as the trainer sees it before truncation: ids, loss mask and the role behind each token."""

    ids: list[int]
    trained: list[bool]
    roles: list[str]  # system | user | assistant | tool | text

    @property
    def supervised(self) -> int:
        return sum(self.trained)

    @property
    def shortest_fit(self) -> int | None:
        """The shortest max_length that leaves this example a token to learn from (None: it has none)."""
        return next((i + 1 for i, t in enumerate(self.trained) if t), None)

    def lost_supervised(self, max_length: int) -> int:
        """Supervised tokens that a cut at `max_length` removes."""
        return sum(self.trained[max_length:])

    def example(self, max_length: int) -> Example | None:
        """The training example, cut at `max_length`; None when no supervised token survives the cut."""
        ids = self.ids[:max_length]
        labels = [i if t else IGNORE_INDEX for i, t in zip(ids, self.trained, strict=False)]
        if all(label == IGNORE_INDEX for label in labels):
            return None  # the prompt alone fills max_length: nothing left to learn from
        return {"input_ids": ids, "labels": labels}


def shape_of(record: dict[str, Any]) -> str:
    """The canonical shape of a record, from its keys."""
    if "messages" in record:
        return "messages"
    if "chosen" in record:
        return "preference"
    if "completion" in record and "label" in record:
        return "unpaired_preference"
    if "label" in record:
        return "classification"
    if "prompt" in record:
        return "prompt_completion"
    return "text"


def conversation(record: dict[str, Any]) -> tuple[list[Message], list[Any] | None]:
    """(messages, tools) of a messages record; a preference record becomes its prompt and chosen answer, an
    unpaired preference record its prompt and its one answer (desirable or not: the label is KTO's business)."""
    if "messages" in record:
        return list(record["messages"]), record.get("tools") or None

    def turns(value: str | list[Message], role: str) -> list[Message]:
        return [{"role": role, "content": value}] if isinstance(value, str) else list(value)

    answer = record["chosen"] if "chosen" in record else record["completion"]
    return turns(record["prompt"], "user") + turns(answer, "assistant"), record.get("tools") or None


def _has_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(tokenizer.chat_template)


# Names no template writes by itself: seeing them in a probe's render means the template renders tools and calls.
_TOOL_PROBE = "toolprobe7f3c"
_CALL_PROBE = "callprobe7f3c"
_handles_tools: dict[str, bool] = {}


def handles_tools(tokenizer: PreTrainedTokenizerBase, template: str) -> bool:
    """Whether `template` writes tool definitions and an assistant's tool calls (cached per template)."""
    if template not in _handles_tools:
        call = {"type": "function", "function": {"name": _CALL_PROBE, "arguments": {"x": 1}}}
        probe: list[dict[str, Any]] = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
        ]
        tool = {"type": "function", "function": {"name": _TOOL_PROBE, "description": "d", "parameters": {}}}
        try:
            text = tokenizer.apply_chat_template(probe, tools=[tool], chat_template=template, tokenize=False)
        except Exception:  # a template that refuses the probe cannot be trusted with tools either
            text = ""
        _handles_tools[template] = isinstance(text, str) and _TOOL_PROBE in text and _CALL_PROBE in text
    return _handles_tools[template]


def training_template(tokenizer: PreTrainedTokenizerBase) -> Any:
    """The chat template conversations are rendered with, and the trained tokenizer is saved with: the base's
    own when it handles tools, else the base's behind `TOOL_FALLBACK`; ChatML (with the fallback) without one.
    A dict of named templates is left to transformers to choose from."""
    template = tokenizer.chat_template
    if not template:
        return CHATML_TEMPLATE
    if not isinstance(template, str) or handles_tools(tokenizer, template):
        return template
    return TOOL_FALLBACK + template


def _template_call(call: dict[str, Any]) -> dict[str, Any]:
    """A canonical tool call as templates take it: arguments as an object (Qwen's and Llama's templates write
    `arguments | tojson`, which would quote a JSON string a second time)."""
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            function["arguments"] = parsed
    return {**call, "function": function}


def _template_message(message: Message) -> Message:
    # Templates index messages by key and some reject unknown ones: pass only what they expect.
    out = {k: v for k, v in message.items() if k != "weight"}
    if out.get("tool_calls"):
        out["tool_calls"] = [_template_call(c) for c in out["tool_calls"]]
    return out


def _chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    tools: list[Any] | None = None,
    *,
    generation_prompt: bool = False,
) -> str:
    text = tokenizer.apply_chat_template(
        [_template_message(m) for m in messages],
        tools=tools or None,
        chat_template=training_template(tokenizer),
        tokenize=False,
        add_generation_prompt=generation_prompt,
    )
    assert isinstance(text, str)
    return text


def format_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, system: str = "", tools: list[Any] | None = None
) -> str:
    """The prompt as the model will see it at inference: its chat template if it has one, else Alpaca. With
    tools, always a chat turn (ChatML and the tool fallback on a base without a template), as conversations with
    tools are trained."""
    if _has_template(tokenizer) or tools:
        turns = [{"role": "system", "content": system}] if system else []
        return _chat(tokenizer, [*turns, {"role": "user", "content": prompt}], tools, generation_prompt=True)
    return (f"{system}\n\n" if system else "") + ALPACA_TEMPLATE.format(prompt=prompt)


def format_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], tools: list[Any] | None = None
) -> str:
    """A conversation so far (an OpenAI chat completion's messages), laid out for the next assistant turn as
    `format_prompt` lays out one question; a model without a template and without tools gets the last user turn
    in the Alpaca layout, as it was trained."""
    if _has_template(tokenizer) or tools:
        return _chat(tokenizer, messages, tools, generation_prompt=True)
    system = "\n".join(str(m.get("content") or "") for m in messages if m.get("role") == "system")
    last = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
    return format_prompt(tokenizer, last, system)


def _system_end(tokenizer: PreTrainedTokenizerBase, system: str, formatted: str) -> int:
    """Where the system part of a formatted prompt ends (0 without one)."""
    if not system:
        return 0
    if not _has_template(tokenizer):
        return len(system) + 2
    try:
        alone = _chat(tokenizer, [{"role": "system", "content": system}])
    except Exception:  # some templates refuse a conversation without a user turn; then all of it is "user"
        return 0
    return len(alone) if formatted.startswith(alone) else 0


@dataclass
class Segment:
    start: int  # first character of the rendered text that belongs to it
    role: str
    trained: bool


def _encode_segments(
    tokenizer: PreTrainedTokenizerBase, text: str, segments: list[Segment], *, add_special_tokens: bool
) -> Rendered:
    """Tokenize `text` once; each token takes the role and loss flag of the segment its first character is in.

    Character offsets are exact where diffing token counts of prefixes is not: a token that straddles a
    boundary belongs to the segment it starts in. A special token the tokenizer adds itself (BOS) has an
    empty span and never carries loss.
    """
    if not tokenizer.is_fast:
        raise ValueError("this base model's tokenizer has no character offsets (not a fast tokenizer)")
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    starts = [s.start for s in segments]
    ids, trained, roles = list(enc["input_ids"]), [], []
    for begin, end in enc["offset_mapping"]:
        seg = segments[max(0, bisect_right(starts, begin) - 1)]
        roles.append(seg.role)
        trained.append(seg.trained and end > begin)
    return Rendered(ids, trained, roles)


def render_prompt_completion(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, system: str = ""
) -> Rendered:
    """Loss on the completion and EOS only.

    Prompt and completion are tokenized separately so the boundary between them is exact (tokenizing the
    joined string could merge the last prompt byte with the first response byte into one token).
    """
    text = format_prompt(tokenizer, prompt, system)
    segments = [Segment(0, "system", False)] if system else []
    segments.append(Segment(_system_end(tokenizer, system, text), "user", False))
    # A chat template writes its own BOS into the text; the Alpaca string needs the tokenizer to add it.
    head = _encode_segments(tokenizer, text, segments, add_special_tokens=not _has_template(tokenizer))
    # The end-of-turn marker and EOS are supervised too: they are how the model learns to stop after answering.
    answer = [*tokenizer(completion, add_special_tokens=False)["input_ids"], *_answer_end(tokenizer)]
    return Rendered(head.ids + answer, head.trained + [True] * len(answer), head.roles + ["assistant"] * len(answer))


def end_of_turn(tokenizer: PreTrainedTokenizerBase) -> str:
    """The text the chat template writes after an assistant's answer ('<|im_end|>', '<|eot_id|>'), or ''."""
    if not _has_template(tokenizer):
        return ""
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _ANSWER_PROBE}]
    try:
        text = _chat(tokenizer, probe)
    except Exception:  # a template that refuses this tiny conversation: no marker is known
        return ""
    at = text.rfind(_ANSWER_PROBE)
    return text[at + len(_ANSWER_PROBE) :].strip() if at >= 0 else ""


def _answer_end(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that close an answer: the end-of-turn marker, then EOS unless the marker already ends in it."""
    ids = list(tokenizer(end_of_turn(tokenizer), add_special_tokens=False)["input_ids"])
    return ids if ids and ids[-1] == tokenizer.eos_token_id else [*ids, tokenizer.eos_token_id]


def _final_turn_end(
    tokenizer: PreTrainedTokenizerBase, full: str, prefix: str, previous: int, role: str, i: int
) -> int:
    """Where assistant message i ends in `full` when the template writes it otherwise as the final turn.

    Qwen3's template puts an empty think block into an assistant turn after the last user query only when it is
    the last message: in an agentic conversation (call, result, answer) the call's prefix render then is not a
    prefix of the whole. The turns before it are unchanged (the renders part after `previous`), so the turn is
    the text of the whole from there to the template's end-of-turn marker. A turn of another role that the
    template merges with the next (Qwen writes consecutive tool results as one user turn, closed after the
    last) ends where the renders part; it carries no loss either way. Any other rewrite still fails.
    """
    parted = next((k for k, (a, b) in enumerate(zip(full, prefix, strict=False)) if a != b), len(prefix))
    if role != "assistant" and parted > previous:
        return parted
    marker = end_of_turn(tokenizer)
    at = full.find(marker, parted) if marker and role == "assistant" and parted >= previous else -1
    if at < 0:
        # e.g. a template that drops earlier turns' reasoning: turn boundaries cannot be located.
        raise ValueError(f"the chat template does not render message {i + 1} as a continuation of the turns before")
    return at + len(marker)


def render_messages(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], tools: list[Any] | None = None
) -> Rendered:
    """Loss on assistant turns (content and end-of-turn marker) whose weight is not 0.

    The template is rendered for growing prefixes of the conversation: message i spans the characters
    between the renders of messages[:i] and messages[:i + 1], and an assistant's trained part starts where
    the render of messages[:i] with the generation prompt ("<|im_start|>assistant\\n") ends. So the turn
    header is masked and the end-of-turn marker, written by the template, is trained. When the conversation
    ends on an assistant turn whose marker is not EOS, EOS follows the marker (trained with the turn), as it
    does after a prompt_completion answer.
    """
    if not messages:
        raise ValueError("empty conversation")
    full = _chat(tokenizer, messages, tools)
    segments: list[Segment] = []
    previous = 0
    for i, message in enumerate(messages):
        prefix = _chat(tokenizer, messages[: i + 1], tools)
        role = str(message["role"])
        if full.startswith(prefix) and len(prefix) >= previous:
            end = len(prefix)
        else:
            end = _final_turn_end(tokenizer, full, prefix, previous, role, i)
        body = previous
        if role == "assistant" and i > 0:
            header = _chat(tokenizer, messages[:i], tools, generation_prompt=True)
            if full.startswith(header) and previous <= len(header) <= end:
                body = len(header)
        trained = role == "assistant" and message.get("weight", 1) != 0
        segments += [Segment(previous, role, False), Segment(body, role, trained)]
        # Whitespace after the end-of-turn marker only separates turns; the model need not learn to write it.
        tail = len(full[:end].rstrip())
        segments.append(Segment(max(body, tail), role, False))
        previous = end
    last = messages[-1]
    ends_answer = last["role"] == "assistant" and not full.rstrip().endswith(str(tokenizer.eos_token))
    # Nothing follows the final turn, so its trailing whitespace goes and EOS comes right after the marker.
    text = full.rstrip() if ends_answer else full
    rendered = _encode_segments(tokenizer, text, segments, add_special_tokens=not _has_template(tokenizer))
    if ends_answer:
        rendered.ids.append(tokenizer.eos_token_id)
        rendered.trained.append(last.get("weight", 1) != 0)
        rendered.roles.append("assistant")
    return rendered


def causal_text(tokenizer: PreTrainedTokenizerBase, record: dict[str, Any]) -> str:
    """A record as plain text for objective causal_lm: instruction data reads as the model would see it."""
    shape = shape_of(record)
    if shape in ("messages", "preference", "unpaired_preference"):
        messages, tools = conversation(record)
        return _chat(tokenizer, messages, tools)
    if shape == "prompt_completion":
        return format_prompt(tokenizer, record["prompt"], record.get("system") or "") + record["completion"]
    if shape == "classification":
        return format_prompt(tokenizer, record["text"]) + str(record["label"])
    return str(record["text"])


def render_text(tokenizer: PreTrainedTokenizerBase, text: str) -> Rendered:
    """Every token and the EOS that `pack_blocks` puts after each document carry loss."""
    ids = [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    return Rendered(ids, [True] * len(ids), ["text"] * len(ids))


def render_record(tokenizer: PreTrainedTokenizerBase, record: dict[str, Any], objective: str) -> Rendered:
    """The record as the trainer of `objective` ("sft" or "causal_lm") sees it."""
    if objective == "causal_lm":
        return render_text(tokenizer, causal_text(tokenizer, record))
    shape = shape_of(record)
    if shape == "prompt_completion":
        return render_prompt_completion(tokenizer, record["prompt"], record["completion"], record.get("system") or "")
    if shape == "classification":
        return render_prompt_completion(tokenizer, record["text"], str(record["label"]))
    if shape in ("messages", "preference", "unpaired_preference"):
        return render_messages(tokenizer, *conversation(record))
    raise ValueError(
        "objective sft needs prompt/completion, messages, preference or classification records; "
        "raw text trains with objective causal_lm"
    )


def tokenize_sft(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, max_length: int
) -> tuple[Example | None, bool]:
    """One prompt/completion example cut at max_length; returns (example or None, truncated)."""
    rendered = render_prompt_completion(tokenizer, prompt, completion)
    return rendered.example(max_length), len(rendered.ids) > max_length


@dataclass
class SFTStats:
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    supervised: int = 0  # tokens that carry loss in the kept examples, after the cut
    shortest_fits: list[int | None] = field(default_factory=list)  # per record, for the pre-flight advice


def build_sft_examples(
    tokenizer: PreTrainedTokenizerBase, records: Iterable[dict[str, Any]], max_length: int
) -> tuple[list[Example], SFTStats]:
    """Tokenize records of any SFT shape; count those cut at max_length and those left with no target."""
    examples, stats = [], SFTStats()
    for number, record in enumerate(records, start=1):
        try:
            rendered = render_record(tokenizer, record, "sft")
        except Exception as exc:
            raise ValueError(f"record {number}: {exc}") from exc
        stats.truncated += len(rendered.ids) > max_length
        stats.shortest_fits.append(rendered.shortest_fit)
        example = rendered.example(max_length)
        if example is None:
            stats.dropped += 1
        else:
            stats.supervised += sum(rendered.trained[:max_length])
            examples.append(example)
    stats.kept = len(examples)
    return examples, stats


def token_pieces(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[str]:
    """The text of each token. A character split over several byte-level tokens is shown on its last one."""
    pieces: list[str] = []
    pending: list[int] = []
    for token_id in ids:
        pending.append(token_id)
        text = tokenizer.decode(pending, skip_special_tokens=False)
        assert isinstance(text, str)
        # U+FFFD: an incomplete UTF-8 sequence (up to 4 bytes); wait for the tokens that complete it.
        if text.endswith("\ufffd") and len(pending) < 4:
            pieces.append("")
            continue
        pieces.append(text)
        pending = []
    return pieces
