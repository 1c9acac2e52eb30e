"""Records → tokens: packing, the held-out split, SFT label masking, padding."""

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tests.workers.support import FIXTURES
from workers.data import PadCollator, pack_blocks, split_holdout, train_tokenizer
from workers.examples import ALPACA_TEMPLATE, IGNORE_INDEX, build_sft_examples, format_prompt, tokenize_sft
from workers.metrics import numeric_values


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    texts = (FIXTURES / "fables.txt").read_text().split("\n\n")
    return train_tokenizer(texts, vocab_size=600)


def test_tokenizer_round_trips_and_has_special_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    text = "The fox said: ünïcode & émoji 🦊 are bytes too."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>"
    assert tokenizer.pad_token == "<|pad|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert len(tokenizer) <= 600


def test_pack_blocks_appends_eos_and_cuts_blocks() -> None:
    blocks = pack_blocks([[1, 2, 3], [4, 5]], eos_id=0, block_size=4)
    assert [b["input_ids"] for b in blocks] == [[1, 2, 3, 0], [4, 5, 0]]
    assert all(b["labels"] == b["input_ids"] for b in blocks)


def test_pack_blocks_drops_a_lone_tail_token() -> None:
    blocks = pack_blocks([[1, 2, 3]], eos_id=0, block_size=3)
    assert [b["input_ids"] for b in blocks] == [[1, 2, 3]]


@pytest.mark.parametrize(
    ("n", "fraction", "n_eval"),
    [(10, 0.1, 1), (10, 0.25, 2), (5, 0.01, 1), (2, 0.9, 1), (1, 0.5, 0), (10, 0.0, 0)],
)
def test_split_holdout_sizes(n: int, fraction: float, n_eval: int) -> None:
    train, held = split_holdout(list(range(n)), fraction, seed=0)
    assert len(held) == n_eval
    assert sorted(train + held) == list(range(n))


def test_split_holdout_is_seeded() -> None:
    assert split_holdout(list(range(20)), 0.2, seed=1) == split_holdout(list(range(20)), 0.2, seed=1)
    assert split_holdout(list(range(20)), 0.2, seed=1) != split_holdout(list(range(20)), 0.2, seed=2)


def test_sft_labels_only_the_response_and_eos(tokenizer: PreTrainedTokenizerFast) -> None:
    example, truncated = tokenize_sft(tokenizer, "Reverse the word: abc", "cba", max_length=256)
    assert example is not None and not truncated
    prompt_ids = tokenizer(ALPACA_TEMPLATE.format(prompt="Reverse the word: abc"))["input_ids"]
    response_ids = tokenizer("cba", add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert example["input_ids"] == prompt_ids + response_ids + [tokenizer.eos_token_id]
    assert example["labels"][:n] == [IGNORE_INDEX] * n
    assert example["labels"][n:] == example["input_ids"][n:]
    assert example["labels"][-1] == tokenizer.eos_token_id


def test_sft_truncation_keeps_partial_responses_and_drops_empty_ones(tokenizer: PreTrainedTokenizerFast) -> None:
    prompt_len = len(tokenizer(ALPACA_TEMPLATE.format(prompt="Reverse the word: abc"))["input_ids"])
    cut, truncated = tokenize_sft(tokenizer, "Reverse the word: abc", "cba cba cba", max_length=prompt_len + 1)
    assert cut is not None and truncated
    assert len(cut["input_ids"]) == prompt_len + 1
    assert cut["labels"][-1] != IGNORE_INDEX
    gone, truncated = tokenize_sft(tokenizer, "Reverse the word: abc", "cba", max_length=prompt_len)
    assert gone is None and truncated

    records = [{"prompt": "Reverse the word: abc", "completion": "cba"}, {"prompt": "x " * 200, "completion": "y"}]
    examples, stats = build_sft_examples(tokenizer, records, max_length=prompt_len + 8)
    assert (stats.kept, stats.truncated, stats.dropped) == (1, 1, 1)
    assert len(examples) == 1


def test_format_prompt_uses_the_chat_template_when_there_is_one() -> None:
    texts = (FIXTURES / "fables.txt").read_text().split("\n\n")
    tok = train_tokenizer(texts, vocab_size=400)
    assert format_prompt(tok, "hi") == ALPACA_TEMPLATE.format(prompt="hi")
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert format_prompt(tok, "hi") == "<user>hi<assistant>"


def test_pad_collator_pads_right_with_ignored_labels() -> None:
    batch = PadCollator(pad_token_id=9)(
        [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].dtype == torch.long


def test_numeric_values_keeps_finite_numbers_only() -> None:
    logs = {"loss": 1.5, "grad_norm": torch.tensor(0.25), "epoch": 2, "nan": float("nan"), "flag": True, "s": "x"}
    assert numeric_values(logs) == {"loss": 1.5, "grad_norm": 0.25, "epoch": 2.0}


def test_split_text_holdout_keeps_documents_whole_and_apart() -> None:
    from workers.data import split_text_holdout

    docs = [f"document {i} " * 10 for i in range(20)]
    train, held = split_text_holdout(docs, 0.1, seed=0)
    assert set(train).isdisjoint(held) and set(train) | set(held) <= set(docs)
    assert sum(map(len, held)) >= 0.1 * sum(map(len, docs))
    assert split_text_holdout(docs, 0.1, seed=0) == (train, held)


def test_split_text_holdout_cuts_a_single_document_near_its_end() -> None:
    from workers.data import split_text_holdout

    train, held = split_text_holdout(["abcdefghij" * 10], 0.1, seed=0)
    assert train == ["abcdefghij" * 9] and held == ["abcdefghij"]
    assert split_text_holdout(["abc"], 0.0, seed=0) == (["abc"], [])
