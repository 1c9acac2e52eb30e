"""Token statistics and the dry run, on a tokenizer with one token per byte so every number is hand-checked."""

from array import array

import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from tests.workers.tokenizers import byte_tokenizer, chat_tokenizer
from workers.analysis.tokens import histogram, packed_blocks, padding_efficiency, render_one, token_stats
from workers.data import pack_blocks
from workers.examples import ALPACA_TEMPLATE

# Every Alpaca prompt costs this many tokens (bytes) on top of the prompt's own.
OVERHEAD = len(ALPACA_TEMPLATE.format(prompt=""))


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return byte_tokenizer()


def test_causal_lm_stats_pack_documents_into_blocks(tok: PreTrainedTokenizerFast) -> None:
    records = [{"text": "abc"}, {"text": "hello"}, {"text": "0123456789"}]
    stats = token_stats(tok, records, objective="causal_lm", max_length=8, batch_size=2)
    # Each document is its bytes plus EOS: 4 + 6 + 11 = 21 tokens → blocks of 8, 8 and 5.
    assert stats["records"] == 3 and stats["tokens"] == 21
    assert stats["tokens_by_role"] == {"text": 21}
    assert (stats["examples"], stats["steps_per_epoch"]) == (3, 2)
    assert stats["supervised_tokens"] == 21 and stats["masked_tokens"] == 0
    assert stats["packing_efficiency"] == round(21 / 24, 4)
    assert stats["truncated_records"] == 0
    assert (stats["cut_tokens"], stats["cut_summary"]) == (
        0,
        "nothing is cut: records are packed whole into blocks of max_length=8 tokens",
    )
    assert stats["length"] == {"min": 4, "max": 11, "mean": 7.0, "p50": 6, "p95": 10}
    # 20 buckets of width 1 (the longest record is 11 tokens): counts at 4, 6 and 11.
    assert stats["histogram"]["edges"] == list(range(21))
    assert [i for i, c in enumerate(stats["histogram"]["counts"]) if c] == [4, 6, 11]


def test_sft_stats_count_supervision_truncation_and_padding(tok: PreTrainedTokenizerFast) -> None:
    records = [
        {"prompt": "ab", "completion": "xyz"},  # OVERHEAD+2 prompt, 3+1 answer: fits
        {"prompt": "ab", "completion": "0123456789"},  # answer cut after 5 of its 11 tokens
        {"prompt": "a" * 40, "completion": "q"},  # the prompt alone is past max_length: dropped
    ]
    max_length = OVERHEAD + 2 + 5
    stats = token_stats(tok, records, objective="sft", max_length=max_length, batch_size=4)
    lengths = [OVERHEAD + 2 + 4, OVERHEAD + 2 + 11, OVERHEAD + 40 + 2]
    assert stats["tokens"] == sum(lengths)
    assert stats["tokens_by_role"] == {"user": 3 * OVERHEAD + 44, "assistant": 4 + 11 + 2}
    assert stats["supervised_tokens"] == 4 + 5
    assert stats["masked_tokens"] == 2 * (OVERHEAD + 2)
    assert stats["lost_supervised_tokens"] == 6 + 2
    assert stats["truncated_records"] == 2
    # Past max_length: 6 answer tokens of the second record, the third's last 35 (2 of them its answer).
    assert stats["cut_tokens"] == 6 + 35
    share = f"{41 / sum(lengths):.1%}"
    cut = f"41 tokens ({share}) beyond max_length={max_length} would be cut, 8 of them supervised"
    assert stats["cut_summary"] == cut
    assert (stats["records_losing_some_supervised"], stats["records_losing_all_supervised"]) == (1, 1)
    assert stats["dropped_records"] == 1
    assert (stats["examples"], stats["steps_per_epoch"]) == (2, 1)
    # One batch of the two kept examples, padded to the longer (max_length).
    kept = [OVERHEAD + 2 + 4, max_length]
    assert stats["packing_efficiency"] == round(sum(kept) / (2 * max_length), 4)


def test_messages_stats_count_tokens_per_role() -> None:
    chat = chat_tokenizer()
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    stats = token_stats(chat, [record, record], objective="sft", max_length=512, batch_size=8)
    roles = stats["tokens_by_role"]
    assert set(roles) == {"system", "user", "assistant"} and sum(roles.values()) == stats["tokens"]
    assert stats["supervised_tokens"] + stats["masked_tokens"] == stats["tokens"]
    # The answer, its end-of-turn marker and the EOS after the final turn.
    answer = chat("Hello<|im_end|><|endoftext|>", add_special_tokens=False)["input_ids"]
    assert stats["supervised_tokens"] == 2 * len(answer)


def test_stats_name_the_record_that_cannot_be_rendered(tok: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ValueError, match="record 1: objective sft needs"):
        token_stats(
            tok, [{"prompt": "a", "completion": "b"}, {"text": "c"}], objective="sft", max_length=64, batch_size=1
        )


def test_packed_blocks_agrees_with_pack_blocks() -> None:
    for n, size in [(21, 8), (16, 8), (17, 8), (3, 8), (1, 8)]:
        blocks = pack_blocks([list(range(n - 1))], eos_id=0, block_size=size)
        assert packed_blocks(n, size) == (len(blocks), sum(len(b["input_ids"]) for b in blocks))


def test_padding_efficiency_and_histogram_edges() -> None:
    assert padding_efficiency(array("q", [4, 4, 2, 2]), batch_size=4) == (12 / 16, 16)
    assert padding_efficiency(array("q", []), batch_size=4) == (0.0, 0)
    h = histogram(np.array([0, 100, 399], dtype=np.int64))
    assert h["edges"][:2] == [0, 20] and len(h["edges"]) == 21 and sum(h["counts"]) == 3 and h["counts"][-1] == 1


def test_render_shows_the_record_as_trained(tok: PreTrainedTokenizerFast) -> None:
    records = [{"prompt": "p", "completion": "z"}, {"prompt": "ab", "completion": "0123456789"}]
    max_length = OVERHEAD + 2 + 5
    out = render_one(tok, iter(records), index=1, objective="sft", max_length=max_length)
    assert out["index"] == 1 and len(out["tokens"]) == max_length
    text = "".join(t["text"] for t in out["tokens"])
    assert text == ALPACA_TEMPLATE.format(prompt="ab") + "01234"
    assert [t["trained"] for t in out["tokens"]] == [False] * (OVERHEAD + 2) + [True] * 5
    assert out["tokens"][0] == {"id": tok.convert_tokens_to_ids("#"), "text": "#", "trained": False}
    assert (out["total_tokens"], out["supervised_tokens"]) == (OVERHEAD + 2 + 11, 5)
    assert out["truncated"] is True and out["lost_supervised_tokens"] == 6 and out["dropped"] is False


def test_render_of_causal_lm_is_never_cut(tok: PreTrainedTokenizerFast) -> None:
    out = render_one(tok, iter([{"text": "0123456"}]), index=0, objective="causal_lm", max_length=8)
    assert len(out["tokens"]) == 8 and all(t["trained"] for t in out["tokens"])
    assert out["tokens"][-1]["text"] == "<|endoftext|>" and out["truncated"] is False
    assert out["later_block_tokens"] == 0


def test_render_of_a_long_causal_lm_record_returns_its_first_block_only(tok: PreTrainedTokenizerFast) -> None:
    """A record longer than a block is packed across blocks: one block's worth is returned, the rest counted."""
    out = render_one(tok, iter([{"text": "0123456789" * 100}]), index=0, objective="causal_lm", max_length=8)
    assert [t["text"] for t in out["tokens"]] == list("01234567")
    assert out["total_tokens"] == 1001 and out["later_block_tokens"] == 993
    assert out["truncated"] is False and out["lost_supervised_tokens"] == 0 and out["supervised_tokens"] == 1001


def test_render_of_a_missing_index_fails(tok: PreTrainedTokenizerFast) -> None:
    with pytest.raises(IndexError):
        render_one(tok, iter([{"text": "a"}]), index=3, objective="causal_lm", max_length=8)
