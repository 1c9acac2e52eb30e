"""Tokenizers built in the tests: one without a chat template, one with a ChatML template, one per byte."""

from pathlib import Path

from transformers import PreTrainedTokenizerFast

from workers.data import train_tokenizer

FABLES = Path(__file__).parent / "fixtures" / "fables.txt"
# Like Qwen's: the turn ends with <|im_end|> (a special token), then a newline.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def plain_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the fables; no chat template."""
    return train_tokenizer(FABLES.read_text().split("\n\n"), vocab_size=600)


def chat_tokenizer() -> PreTrainedTokenizerFast:
    """The same, with <|im_start|>/<|im_end|> as special tokens and a ChatML chat template."""
    tokenizer = plain_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    return tokenizer


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """No merges: one token per UTF-8 byte, so token counts can be checked by hand."""
    return train_tokenizer(["abc"], vocab_size=258)  # 256 bytes + EOS + PAD leaves room for no merge
