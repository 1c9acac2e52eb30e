"""Token ids → training batches: tokenizer training, packed blocks, held-out splits and the padding collator.

Pretraining corpora, of any size, go to memory-mapped token files instead (`workers.corpus`); `pack_blocks` and
`split_text_holdout` serve the fine-tune path's causal_lm corpora, small enough for lists.

Records become token ids in `workers.examples`. Every example is a dict of plain lists,
`{"input_ids": [...], "labels": [...]}`, where a label of -100 means "no loss here" (the value
`torch.nn.CrossEntropyLoss` ignores by default). Models shift labels by one position internally, so labels
are aligned with input_ids, not with the next token.
"""

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from workers.examples import IGNORE_INDEX, Example

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

T = TypeVar("T")


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`: any string encodes, with no unknown token."""
    tokenizer = Tokenizer(models.BPE())
    # Byte-level pre-tokenization maps every byte to a visible symbol, so the 256 bytes form the base
    # alphabet and merges are learned on top; add_prefix_space=False keeps encode/decode an exact round trip.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # One token marks both ends of a document (GPT-2 style): between packed documents an end is a beginning.
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )


def borrowed_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of the model directory `path`, for pretraining: with an EOS to separate packed documents
    and a pad token for the collator."""
    # A missing directory would otherwise be taken for a Hub repo id; models are only ever local here.
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer model directory {path} does not exist (moved or deleted?)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if tokenizer.eos_token is None:
        # The model is initialized for len(tokenizer) tokens, so a token added here gets an embedding row.
        tokenizer.add_special_tokens({"eos_token": EOS_TOKEN})
    if tokenizer.pad_token is None:
        # Padded positions get label -100 and attention mask 0 from the collator: no extra token is needed.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def pack_blocks(docs: Iterable[Sequence[int]], eos_id: int, block_size: int) -> list[Example]:
    """Concatenate documents, each followed by EOS, and cut the stream into blocks of `block_size` tokens.

    Packing wastes no compute on padding. Attention crosses document boundaries inside a block; the EOS
    between documents teaches the model that what follows is unrelated, which is the usual trade-off.
    """
    stream: list[int] = []
    for ids in docs:
        stream.extend(ids)
        stream.append(eos_id)
    blocks = [stream[i : i + block_size] for i in range(0, len(stream), block_size)]
    # A short tail is kept (the collator pads it) unless it is a lone token, which has nothing to predict.
    blocks = [b for b in blocks if len(b) >= 2]
    return [{"input_ids": b, "labels": list(b)} for b in blocks]


def split_holdout(items: list[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Shuffle with `seed`, then hold out `fraction` for evaluation (at least one item, never all)."""
    items = list(items)
    random.Random(seed).shuffle(items)
    if fraction <= 0 or len(items) < 2:
        return items, []
    n_eval = min(max(1, round(len(items) * fraction)), len(items) - 1)
    return items[n_eval:], items[:n_eval]


def split_text_holdout(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out about `fraction` of the characters, as whole documents where possible, before tokenizing.

    Splitting packed blocks instead would put the neighbours of every eval block (same document, same page)
    in the training set and flatter the eval loss; and the tokenizer would have seen the eval text. A corpus
    that is one long document is cut near its end, like nanoGPT's 90/10 split.
    """
    if fraction <= 0 or not texts:
        return list(texts), []
    train = list(texts)
    random.Random(seed).shuffle(train)
    target = sum(len(t) for t in train) * fraction
    held: list[str] = []
    size = 0
    while size < target and train:
        text = train.pop()
        need = int(target - size)
        if len(text) > 2 * need or not train:  # cut this document rather than overshoot (or empty train)
            cut = max(1, len(text) - max(1, need))
            train.append(text[:cut])
            text = text[cut:]
        held.append(text)
        size += len(text)
    return train, [t for t in held if t]


@dataclass
class PadCollator:
    """Right-pads a batch: pad id in input_ids, -100 in labels, and an attention mask of real tokens."""

    pad_token_id: int

    def __call__(self, features: list[Example]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
