"""Tool calling through rendering, the dry run, the saved artifact and the playground worker.

Two paths: a base template that renders `tools` and `tool_calls` itself (NATIVE, written here in Qwen's manner)
gets them as they are; one that ignores them (ChatML, or no template at all) goes through the tool fallback.
Either way the call is trained (name and arguments inside the loss-bearing span), the result never is, and the
tokenizer saved with the trained weights lays a tool conversation out exactly as training did.
"""

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

import workers.generate as gen
from backend.dataset.formats import read_records
from tests.workers.support import Pretrained, Seed, add_dataset, create_job
from tests.workers.test_examples import trained_runs
from tests.workers.test_generate import greedy, queue_generation, row
from tests.workers.test_recipe_finetune import FINETUNE_HP, unzip_artifact
from tests.workers.tokenizers import CHATML, chat_tokenizer, plain_tokenizer
from workers.analysis.tokens import render_one
from workers.artifacts import save_tokenizer
from workers.examples import (
    CHATML_TEMPLATE,
    TOOL_FALLBACK,
    _chat,
    format_prompt,
    handles_tools,
    load_tokenizer,
    render_record,
    training_template,
)
from workers.tasks import run_job

# Renders tool definitions in a system turn and each call as <tool_call> JSON, arguments as an object: the
# shape of Qwen 2.5's template, cut down.
NATIVE = (
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %}\n{{ t | tojson }}{% endfor %}<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] or '' }}"
    "{% for c in m['tool_calls'] or [] %}<tool_call>{\"name\": {{ c['function']['name'] | tojson }}, "
    "\"arguments\": {{ c['function']['arguments'] | tojson }}{{ '}' }}</tool_call>{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
# A canonical record as backend/dataset/formats/chat.py makes it: OpenAI's form, arguments a JSON string.
RECORD: dict[str, Any] = {
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}],
        },
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "It is 21 degrees."},
    ],
    "tools": TOOLS,
}


def native_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = chat_tokenizer()
    tokenizer.chat_template = NATIVE
    return tokenizer


TOKENIZERS = {"native": native_tokenizer, "chatml": chat_tokenizer, "none": plain_tokenizer}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def tok(request: pytest.FixtureRequest) -> PreTrainedTokenizerFast:
    return TOKENIZERS[request.param]()


def test_which_templates_handle_tools() -> None:
    native, chatml, plain = native_tokenizer(), chat_tokenizer(), plain_tokenizer()
    assert handles_tools(native, NATIVE) and training_template(native) == NATIVE
    assert not handles_tools(chatml, CHATML)
    assert training_template(chatml) == TOOL_FALLBACK + CHATML
    assert training_template(plain) == CHATML_TEMPLATE and CHATML_TEMPLATE.startswith(TOOL_FALLBACK)
    # Wrapped once: a template already behind the fallback handles tools and is kept as it is.
    chatml.chat_template = TOOL_FALLBACK + CHATML
    assert training_template(chatml) == TOOL_FALLBACK + CHATML


def test_a_call_is_trained_and_its_result_is_not(tok: PreTrainedTokenizerFast) -> None:
    rendered = render_record(tok, RECORD, "sft")
    text = tok.decode(rendered.ids)
    runs = trained_runs(tok, rendered)
    # The definitions are in the prompt, masked.
    assert "Weather in a city" in text and not any("Weather in a city" in r for r in runs)
    # The call is a turn of its own, trained: name and arguments (an object, never a quoted string).
    call = next(r for r in runs if "weather" in r)
    assert '"name": "weather"' in call and '"arguments": {"city": "Paris"}' in call and "<tool_call>" in call
    assert '"{\\"city' not in text
    # The result is shown to the model and never learned.
    assert '{"temp": 21}' in text and not any("temp" in r for r in runs)
    tool_tokens = [t for t, role in zip(rendered.trained, rendered.roles, strict=True) if role == "tool"]
    assert tool_tokens and not any(tool_tokens)
    assert runs[-1].startswith("It is 21 degrees.")


# Qwen's other habits: the final assistant turn only gets an (empty) think block, and consecutive tool results
# share one user turn, closed after the last. Neither renders a turn's prefix as a prefix of the whole.
QWEN_LIKE = (
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %}\n{{ t | tojson }}{% endfor %}<|im_end|>\n"
    "{% endif %}{% for m in messages %}{% if m.role == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1].role != 'tool' %}<|im_start|>user{% endif %}"
    "\n<tool_response>{{ m.content }}</tool_response>"
    "{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}<|im_end|>\n{% endif %}"
    "{% else %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and loop.last %}<think></think>{% endif %}"
    "{{ m.content or '' }}{% for c in m.tool_calls or [] %}<tool_call>{\"name\": {{ c.function.name | tojson }}, "
    "\"arguments\": {{ c.function.arguments | tojson }}{{ '}' }}</tool_call>{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_that_writes_the_final_turn_otherwise_still_trains_calls() -> None:
    tokenizer = chat_tokenizer()
    tokenizer.chat_template = QWEN_LIKE
    calls = [
        {"type": "function", "function": {"name": "weather", "arguments": json.dumps({"city": city})}}
        for city in ("Paris", "Rome")
    ]
    messages = [
        RECORD["messages"][0],
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "content": "rainy"},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Rain in Paris, sun in Rome."},
    ]
    rendered = render_record(tokenizer, {"messages": messages, "tools": TOOLS}, "sft")
    runs = trained_runs(tokenizer, rendered)
    assert runs[0].startswith('<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call><tool_call>')
    assert runs[0].endswith("<|im_end|>") and "<think>" not in runs[0]
    assert runs[1].startswith("<think></think>Rain in Paris")
    assert not any("rainy" in r or "sunny" in r for r in runs)


def test_the_fallback_leaves_conversations_without_tools_as_they_were() -> None:
    tokenizer = chat_tokenizer()
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert _chat(tokenizer, plain) == tokenizer.apply_chat_template(plain, tokenize=False)
    # With tools, the definitions join an existing system turn rather than adding a second one.
    with_system = [{"role": "system", "content": "Be brief."}, *plain]
    text = _chat(tokenizer, with_system, TOOLS)
    assert text.count("<|im_start|>system") == 1 and text.startswith("<|im_start|>system\nBe brief.\n\n# Tools")


def as_users_write_them(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as transformers' docs have callers pass it: arguments as an object."""
    out = []
    for m in messages:
        calls = [
            {**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
            for c in m.get("tool_calls", [])
        ]
        out.append({**m, "tool_calls": calls} if calls else m)
    return out


@pytest.mark.parametrize("name", ["native", "chatml"])
def test_the_saved_tokenizer_lays_tools_out_as_training_did(name: str, tmp_path: Path) -> None:
    tokenizer = TOKENIZERS[name]()
    trained_on = _chat(tokenizer, RECORD["messages"], TOOLS)  # what render_record tokenized
    save_tokenizer(tokenizer, tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.chat_template == training_template(tokenizer)
    served = loaded.apply_chat_template(as_users_write_them(RECORD["messages"]), tools=TOOLS, tokenize=False)
    assert served == trained_on
    if name == "chatml":  # the fallback also takes arguments as OpenAI writes them, a JSON string
        assert loaded.apply_chat_template(RECORD["messages"], tools=TOOLS, tokenize=False) == trained_on
    # And the prompt the playground builds asks the way training laid the first turn out.
    prompt = format_prompt(loaded, "Weather in Paris?", tools=TOOLS)
    assert trained_on.startswith(prompt.removesuffix("<|im_start|>assistant\n"))


def test_a_tokenizer_without_a_template_is_saved_without_one(tmp_path: Path) -> None:
    save_tokenizer(plain_tokenizer(), tmp_path)  # prompt/completion training keeps its Alpaca layout
    assert not AutoTokenizer.from_pretrained(tmp_path).chat_template


SHAREGPT = [
    {
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": '{"temp": 21}'},
            {"from": "gpt", "value": "It is 21 degrees in Paris."},
        ],
        "tools": json.dumps(TOOLS),
    },
    {"conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi, how can I help?"}]},
]


def write_sharegpt(directory: Path, copies: int = 1) -> Path:
    path = directory / "tool_chats.json"
    path.write_text(json.dumps(SHAREGPT * copies))
    return path


def test_the_dry_run_shows_the_call_trained_and_the_result_masked(tmp_path: Path) -> None:
    path = write_sharegpt(tmp_path)
    out = render_one(chat_tokenizer(), read_records(path, path.name), index=0, objective="sft", max_length=1024)
    text = "".join(t["text"] for t in out["tokens"])
    trained = "".join(t["text"] for t in out["tokens"] if t["trained"])
    assert "Weather in a city" in text and '<tool_call>\n{"name": "weather"' in trained
    assert '{"temp": 21}' in text and "temp" not in trained
    # A record without tools renders as plain ChatML.
    plain = render_one(chat_tokenizer(), read_records(path, path.name), index=1, objective="sft", max_length=1024)
    assert "".join(t["text"] for t in plain["tokens"]).startswith("<|im_start|>user\nHello")


def test_lora_sft_on_tool_calls_ships_the_template_it_trained_with(
    seed: Seed, pretrained: Pretrained, tmp_path: Path
) -> None:
    dataset = add_dataset(seed.user_id, write_sharegpt(tmp_path, copies=4))
    job_id = create_job(
        seed,
        kind="finetune",
        method="lora",
        objective="sft",
        dataset_id=dataset,
        base_model_id=pretrained.model_id,
        hyperparameters={**FINETUNE_HP, "max_steps": 2, "max_length": 512, "validation_fraction": 0.0},
    )
    assert run_job(job_id) == "succeeded"
    unzip_artifact(job_id, "adapter.zip", tmp_path / "adapter")
    shipped = AutoTokenizer.from_pretrained(tmp_path / "adapter")
    record = next(iter(read_records(tmp_path / "tool_chats.json", "tool_chats.json")))
    # The base has no template: training laid conversations out in ChatML with the tool fallback.
    trained_on = _chat(load_tokenizer(pretrained.model_path), record["messages"], record["tools"])
    assert shipped.apply_chat_template(record["messages"], tools=record["tools"], tokenize=False) == trained_on


def test_the_playground_passes_tools_to_the_prompt(seed: Seed, pretrained: Pretrained) -> None:
    prompt = "Weather in Paris?"
    gid = queue_generation(seed, prompt=prompt, model_id=pretrained.model_id, tools=json.dumps(TOOLS))
    params = row(gid).params
    # No chat template, yet tools ask for a chat turn: ChatML with the tool fallback, as conversations train.
    assert params["chat"] is True and params["tools"] == TOOLS
    assert gen.generate(gid) == "done"
    tokenizer = load_tokenizer(pretrained.model_path)
    text = format_prompt(tokenizer, prompt, tools=TOOLS)
    assert "<tools>" in text and text.endswith("<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(pretrained.model_path)
    assert row(gid).output == greedy(model, tokenizer, text, chat=True)
