"""Records of every shape → token ids and loss masks, as the trainer (and the dry run) sees them."""

import pytest
from transformers import PreTrainedTokenizerFast

from tests.workers.tokenizers import byte_tokenizer, chat_tokenizer, plain_tokenizer
from workers.examples import (
    ALPACA_TEMPLATE,
    CHATML_TEMPLATE,
    IGNORE_INDEX,
    Rendered,
    build_sft_examples,
    causal_text,
    end_of_turn,
    render_messages,
    render_record,
    token_pieces,
)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi fox"},
    {"role": "assistant", "content": "Hello there"},
    {"role": "user", "content": "Again"},
    {"role": "assistant", "content": "No", "weight": 0},
    {"role": "tool", "content": "42"},
    {"role": "assistant", "content": "Bye 🦊"},
]


@pytest.fixture(scope="module")
def plain() -> PreTrainedTokenizerFast:
    return plain_tokenizer()


@pytest.fixture(scope="module")
def chat() -> PreTrainedTokenizerFast:
    return chat_tokenizer()


def trained_runs(tokenizer: PreTrainedTokenizerFast, rendered: Rendered) -> list[str]:
    """The text of each maximal run of loss-carrying tokens."""
    runs, current = [], []
    for token_id, trained in zip(rendered.ids, rendered.trained, strict=True):
        if trained:
            current.append(token_id)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return [*runs, tokenizer.decode(current)] if current else runs


def test_messages_with_a_chat_template_train_assistant_turns_and_their_end_marker(
    chat: PreTrainedTokenizerFast,
) -> None:
    rendered = render_messages(chat, CONVERSATION)
    full = chat.apply_chat_template(CONVERSATION, tokenize=False)
    # The final turn's trailing newline gives way to EOS, right after its marker.
    expected = [*chat(full.rstrip(), add_special_tokens=False)["input_ids"], chat.eos_token_id]
    assert rendered.ids == expected
    # Turn 2 has weight 0; the header "<|im_start|>assistant\n" and the newline after <|im_end|> are masked.
    assert trained_runs(chat, rendered) == ["Hello there<|im_end|>", "Bye 🦊<|im_end|><|endoftext|>"]
    assert rendered.roles[0] == "system" and rendered.roles[-1] == "assistant"
    assert {"system", "user", "assistant", "tool"} == set(rendered.roles)
    newline = chat("\n", add_special_tokens=False)["input_ids"]
    assert not any(t for i, t in zip(rendered.ids, rendered.trained, strict=True) if [i] == newline)


def test_messages_without_a_template_use_chatml_closed_by_eos(plain: PreTrainedTokenizerFast) -> None:
    rendered = render_messages(plain, CONVERSATION)
    assert "".join(token_pieces(plain, rendered.ids)).startswith("<|im_start|>system\nBe brief.<|endoftext|>\n")
    assert trained_runs(plain, rendered) == ["Hello there<|endoftext|>", "Bye 🦊<|endoftext|>"]
    eos_positions = [i for i, t in enumerate(rendered.ids) if t == plain.eos_token_id]
    # EOS closes every turn; only the assistant's (weighted) EOS is learned: that is how the model stops.
    assert [rendered.trained[i] for i in eos_positions] == [False, False, True, False, False, False, True]


def test_example_labels_are_ids_where_trained(chat: PreTrainedTokenizerFast) -> None:
    rendered = render_messages(chat, CONVERSATION)
    example = rendered.example(max_length=10_000)
    assert example is not None and example["input_ids"] == rendered.ids
    assert [label != IGNORE_INDEX for label in example["labels"]] == rendered.trained


def test_truncation_counts_lost_supervision_and_drops_examples_with_none_left(chat: PreTrainedTokenizerFast) -> None:
    rendered = render_messages(chat, CONVERSATION)
    first_trained = rendered.trained.index(True)
    cut = first_trained + 2
    example = rendered.example(cut)
    assert example is not None and len(example["input_ids"]) == cut
    assert rendered.lost_supervised(cut) == rendered.supervised - 2
    assert rendered.example(first_trained) is None
    assert rendered.lost_supervised(first_trained) == rendered.supervised


def test_a_conversation_with_no_weighted_assistant_turn_is_dropped(chat: PreTrainedTokenizerFast) -> None:
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo", "weight": 0}]}
    examples, stats = build_sft_examples(chat, [record], max_length=64)
    assert examples == [] and stats.dropped == 1


def test_prompt_completion_with_system_keeps_the_alpaca_layout(plain: PreTrainedTokenizerFast) -> None:
    rendered = render_record(plain, {"system": "Be kind.", "prompt": "Reverse: abc", "completion": "cba"}, "sft")
    prompt = "Be kind.\n\n" + ALPACA_TEMPLATE.format(prompt="Reverse: abc")
    prompt_ids = plain(prompt)["input_ids"]
    assert rendered.ids == [*prompt_ids, *plain("cba", add_special_tokens=False)["input_ids"], plain.eos_token_id]
    assert trained_runs(plain, rendered) == ["cba<|endoftext|>"]
    assert rendered.roles[0] == "system" and rendered.roles[len(prompt_ids) - 1] == "user"


def test_prompt_completion_with_a_template_formats_the_prompt_as_a_chat(chat: PreTrainedTokenizerFast) -> None:
    rendered = render_record(chat, {"prompt": "Reverse: abc", "completion": "cba"}, "sft")
    text = "".join(token_pieces(chat, rendered.ids))
    assert text == "<|im_start|>user\nReverse: abc<|im_end|>\n<|im_start|>assistant\ncba<|im_end|><|endoftext|>"
    assert trained_runs(chat, rendered) == ["cba<|im_end|><|endoftext|>"]


def test_preference_trains_the_chosen_answer_and_classification_the_label(chat: PreTrainedTokenizerFast) -> None:
    pref = render_record(chat, {"prompt": "2+2?", "chosen": "4", "rejected": "5"}, "sft")
    assert trained_runs(chat, pref) == ["4<|im_end|><|endoftext|>"]
    convo = [{"role": "user", "content": "2+2?"}]
    pref2 = render_record(
        chat, {"prompt": convo, "chosen": [{"role": "assistant", "content": "4"}], "rejected": []}, "sft"
    )
    assert pref2.ids == pref.ids
    label = render_record(chat, {"text": "great film", "label": 1}, "sft")
    assert trained_runs(chat, label) == ["1<|im_end|><|endoftext|>"]


def test_causal_lm_trains_every_token_of_any_shape(chat: PreTrainedTokenizerFast) -> None:
    record = {"messages": CONVERSATION[1:3]}
    rendered = render_record(chat, record, "causal_lm")
    assert all(rendered.trained) and rendered.ids[-1] == chat.eos_token_id
    assert (
        causal_text(chat, record)
        == "<|im_start|>user\nHi fox<|im_end|>\n<|im_start|>assistant\nHello there<|im_end|>\n"
    )
    text = render_record(chat, {"text": "Once upon a time"}, "causal_lm")
    assert set(text.roles) == {"text"}


def test_sft_on_raw_text_is_refused(plain: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ValueError, match="causal_lm"):
        render_record(plain, {"text": "just text"}, "sft")
    with pytest.raises(ValueError, match="record 2"):
        build_sft_examples(plain, [{"prompt": "a", "completion": "b"}, {"text": "c"}], max_length=32)


def test_a_template_that_rewrites_earlier_turns_is_refused() -> None:
    tokenizer = plain_tokenizer()
    # Shows only the last message's content in full: a prefix render is not a prefix of the whole.
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] if loop.last else '...' }}|{% endfor %}"
    with pytest.raises(ValueError, match="continuation"):
        render_messages(tokenizer, CONVERSATION[1:3])


def test_token_pieces_put_a_split_character_on_its_last_byte() -> None:
    tokenizer = byte_tokenizer()
    ids = tokenizer("a🦊b", add_special_tokens=False)["input_ids"]
    assert len(ids) == 6  # a, four bytes of the fox, b
    assert token_pieces(tokenizer, ids) == ["a", "", "", "", "🦊", "b"]


def test_the_fallback_template_is_chatml_with_eos() -> None:
    assert "<|im_start|>" in CHATML_TEMPLATE and "eos_token" in CHATML_TEMPLATE


# Llama-3 style: the turn ends with <|eot_id|>, a special token that is not the tokenizer's EOS.
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@pytest.fixture(scope="module")
def llama3() -> PreTrainedTokenizerFast:
    tokenizer = plain_tokenizer()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    tokenizer.chat_template = LLAMA3
    return tokenizer


@pytest.mark.parametrize("name", ["chat", "llama3"])
def test_both_sft_shapes_end_an_answer_with_the_marker_then_eos(name: str, request: pytest.FixtureRequest) -> None:
    """Whatever the template's end-of-turn marker, prompt_completion and messages train the same stop."""
    tokenizer = request.getfixturevalue(name)
    marker = "<|im_end|>" if name == "chat" else "<|eot_id|>"
    assert marker != tokenizer.eos_token
    assert end_of_turn(tokenizer) == marker
    pair = render_record(tokenizer, {"prompt": "2+2?", "completion": "4"}, "sft")
    convo = render_record(
        tokenizer, {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}, "sft"
    )
    stop = [tokenizer.convert_tokens_to_ids(marker), tokenizer.eos_token_id]
    for rendered in (pair, convo):
        assert rendered.ids[-2:] == stop and rendered.trained[-2:] == [True, True]
        assert trained_runs(tokenizer, rendered) == [f"4{marker}{tokenizer.eos_token}"]
    assert pair.ids == convo.ids  # the same prompt through the same template: the very same example


def test_a_marker_that_is_eos_is_not_doubled(plain: PreTrainedTokenizerFast) -> None:
    rendered = render_record(
        plain, {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}, "sft"
    )
    assert trained_runs(plain, rendered) == ["Yo<|endoftext|>"]
    assert rendered.ids.count(plain.eos_token_id) == 2  # the user's turn and the assistant's, once each
