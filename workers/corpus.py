"""Pretraining corpora bigger than memory: text streamed once into a memory-mapped file of token ids.

Read top to bottom: which documents are held out (a seeded hash of each document's index, decided as the stream
goes by) → the bounded sample a new tokenizer learns from → the corpus tokenized in batches into `train.bin` and
`eval.bin` (each document followed by EOS; uint16 when the vocabulary fits in 65,536 ids, else uint32) → blocks
of max_length tokens read back by slicing the file. nanoGPT's `train.bin`, but streamed: the worker's memory
does not grow with the corpus (a Python list of ints costs ~50 bytes a token, a uint16 two).

The files live in a cache under the data folder keyed by the dataset version, its read options, the tokenizer
and the split, so a second job on the same corpus, or a resumed one, maps the very same token ids without
tokenizing again. A cache entry is written in a staging folder and renamed into place when complete: a crash
leaves a staging folder, never an entry that looks whole.
"""

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO, overload

import numpy as np
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from backend.config import get_settings
from workers.context import DatasetRef
from workers.examples import Example

# Bump when the file layout or the split rule changes: entries of an older format are then never read.
FORMAT = 1
TRAIN, EVAL = "train", "eval"
META = "meta.json"
# Text per batch encode: enough for the tokenizer's Rust threads to share, little memory (~5x that in ids).
BATCH_CHARS = 4 * 2**20
# A staging folder untouched this long belongs to a worker that died: its space is taken back.
STALE_SECONDS = 3600.0
# The most text held out for evaluation (Holdout.limit): about a million tokens of English.
EVAL_MAX_CHARS = 4 * 2**20
# Characters per token, roughly, for a byte-level BPE on English: to cap a held-out token tail like a text one.
CHARS_PER_TOKEN = 4

# (characters of the corpus read so far, tokens written so far): called after every batch.
ProgressFn = Callable[[int, int], None]


def no_progress(done: int, tokens: int) -> None:
    """The reporter of a build no one follows (tests, scripts)."""


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """The narrowest unsigned integer that holds every id of a `vocab_size` vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def vocabulary_size(tokenizer: PreTrainedTokenizerBase) -> int:
    """Ids the tokenizer can produce (its vocabulary with the added tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    own = backend.get_vocab_size(with_added_tokens=True) if backend is not None else 0
    return max(len(tokenizer), own)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything that decides the ids: the tokenizer's JSON (vocabulary, merges, normalizer, pre-
    tokenizer, added tokens) and the EOS put after each document. Stable through save_pretrained/from_pretrained."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{spec}\neos={tokenizer.eos_token_id}".encode()).hexdigest()


def documents(dataset: DatasetRef) -> Iterator[str]:
    """The dataset's texts, streamed in file order (records without a text field are skipped)."""
    return (r["text"] for r in dataset.records() if "text" in r)


def _unit(salt: str, index: int, seed: int) -> float:
    """A uniform number in [0, 1) that depends only on (salt, index, seed): the same on every run and rank."""
    digest = hashlib.blake2b(f"{salt}:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


# --- which documents are held out ---------------------------------------------------------------------


@dataclass
class Holdout:
    """Which documents are held out for evaluation, decided one document at a time as the stream goes by.

    A document is eligible when its seeded hash falls under twice the fraction, and held out only while that keeps
    the held-out characters at about `fraction` of those seen: a random choice of whole documents (no eval block
    shares a document with a training block) whose share converges on the fraction whatever the documents' sizes,
    without knowing the corpus's size in advance. A corpus with too few documents holds none out: the build then
    takes the token stream's tail instead (`TokenCorpus.eval_source` says which)."""

    fraction: float
    seed: int
    # At most this much text is held out, whatever the fraction: the final evaluation reads it all, and past a
    # million tokens or so the loss it measures is no more precise (10% of a 1 GB corpus would be 100 MB).
    limit: int = EVAL_MAX_CHARS
    seen: int = 0  # characters of the documents so far
    held: int = 0  # characters of those held out

    def take(self, index: int, chars: int) -> bool:
        """Whether document `index` (of `chars` characters) is held out; call once per document, in order."""
        self.seen += chars
        held = (
            self.fraction > 0
            and chars > 0
            and _unit("eval", index, self.seed) < 2 * self.fraction
            and self.held + chars / 2 <= self.fraction * self.seen
            and self.held + chars <= self.limit
        )
        if held:
            self.held += chars
        return held

    def fresh(self) -> "Holdout":
        """The same rule from the stream's start (each pass over the corpus replays it)."""
        return Holdout(self.fraction, self.seed, self.limit)


# --- the tokenizer's sample -------------------------------------------------------------------------------


@dataclass
class Sample:
    """The training text a new tokenizer learns from: bounded, drawn across the corpus, eval documents never."""

    texts: list[str] = field(default_factory=list)
    documents: int = 0
    chars: int = 0
    whole: bool = False  # the sample is the whole training text


def tokenizer_sample(docs: Iterable[str], *, budget: int, rate: float, holdout: Holdout, seed: int) -> Sample:
    """Up to `budget` characters of training text: documents drawn at `rate` by a seeded hash (so a corpus sorted
    by topic still gives a vocabulary of all of it), each cut to what the budget has left."""
    sample = Sample()
    exhausted = True
    for index, text in enumerate(docs):
        if holdout.take(index, len(text)) or (rate < 1 and _unit("sample", index, seed) >= rate):
            continue
        text = text[: budget - sample.chars]
        sample.texts.append(text)
        sample.documents += 1
        sample.chars += len(text)
        if sample.chars >= budget:
            exhausted = False
            break
    sample.whole = exhausted and rate >= 1
    if sample.whole and holdout.fraction > 0 and holdout.held == 0:
        # Too few documents to hold any out: the eval part will be the stream's tail, which the tokenizer must
        # not learn from either (nanoGPT's split of one long text, applied to the sample as to the tokens).
        _drop_tail(sample, round(sample.chars * holdout.fraction))
    return sample


def _drop_tail(sample: Sample, chars: int) -> None:
    while chars > 0 and sample.texts:
        last = sample.texts.pop()
        keep = max(0, len(last) - chars)
        chars -= len(last) - keep
        sample.chars -= len(last) - keep
        if keep:
            sample.texts.append(last[:keep])


# --- writing the token files ------------------------------------------------------------------------------


class Encoder:
    """Documents → one array of their token ids, each document followed by EOS, in batches."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, dtype: np.dtype[Any]) -> None:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no EOS token to separate the documents with")
        self.tokenizer, self.eos, self.dtype = tokenizer, int(eos), dtype
        backend = getattr(tokenizer, "backend_tokenizer", None)
        # The Rust tokenizer encodes a batch on all cores; the fast variant skips the offsets nobody reads here.
        self.batch = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self.batch is not None:
            rows: list[list[int]] = [e.ids for e in self.batch(texts, add_special_tokens=False)]
        else:
            rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        count = sum(len(r) for r in rows) + len(rows)
        ids = chain.from_iterable(chain(r, (self.eos,)) for r in rows)
        return np.fromiter(ids, dtype=self.dtype, count=count)


class TokenFile:
    """Token ids appended to a file, raw (native byte order, no header): what np.memmap reads back."""

    def __init__(self, path: Path, dtype: np.dtype[Any]) -> None:
        self.path, self.dtype, self.count = path, dtype, 0
        self._file: BinaryIO = path.open("wb")

    def write(self, ids: np.ndarray) -> None:
        ids.astype(self.dtype, copy=False).tofile(self._file)
        self.count += len(ids)

    def close(self) -> None:
        self._file.close()


@dataclass
class Batches:
    """Texts waiting to be encoded, per part, flushed when a part holds BATCH_CHARS."""

    encode: Encoder
    files: dict[str, TokenFile]
    pending: dict[str, list[str]] = field(default_factory=lambda: {TRAIN: [], EVAL: []})
    chars: dict[str, int] = field(default_factory=lambda: {TRAIN: 0, EVAL: 0})

    def add(self, part: str, text: str) -> bool:
        """Queue `text`; True when a batch was encoded and written."""
        self.pending[part].append(text)
        self.chars[part] += len(text)
        if self.chars[part] < BATCH_CHARS:
            return False
        self.flush(part)
        return True

    def flush(self, part: str) -> None:
        if self.pending[part]:
            self.files[part].write(self.encode(self.pending[part]))
        self.pending[part], self.chars[part] = [], 0

    @property
    def tokens(self) -> int:
        return sum(f.count for f in self.files.values())


def write_corpus(
    folder: Path,
    docs: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    holdout: Holdout,
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """Tokenize `docs` into `folder`/train.bin and eval.bin; return the metadata (not written: the caller's
    META marks the folder complete)."""
    dtype = token_dtype(vocabulary_size(tokenizer))
    files = {part: TokenFile(folder / f"{part}.bin", dtype) for part in (TRAIN, EVAL)}
    batches = Batches(Encoder(tokenizer, dtype), files)
    counts = {TRAIN: 0, EVAL: 0}
    try:
        for index, text in enumerate(docs):
            part = EVAL if holdout.take(index, len(text)) else TRAIN
            counts[part] += 1
            if batches.add(part, text):
                progress(holdout.seen, batches.tokens)
        batches.flush(TRAIN)
        batches.flush(EVAL)
    finally:
        for f in files.values():
            f.close()
    eval_source = "documents" if files[EVAL].count else "none"
    if holdout.fraction > 0 and not files[EVAL].count:
        move_tail(files, holdout.fraction, holdout.limit // CHARS_PER_TOKEN)
        eval_source = "tail"
    progress(holdout.seen, batches.tokens)
    return {
        "format": FORMAT,
        "dtype": dtype.name,
        "eos_token_id": batches.encode.eos,
        "tokens": {part: f.count for part, f in files.items()},
        "documents": counts,
        "chars": holdout.seen,
        "eval_source": eval_source,
    }


def move_tail(files: dict[str, TokenFile], fraction: float, most: int) -> None:
    """Make the last `fraction` of the training stream, up to `most` tokens, the eval part (a corpus too short in
    documents)."""
    train = files[TRAIN]
    n = min(max(2, round(train.count * fraction)), train.count - 2, most)
    if n < 2:
        return  # too short to split: no evaluation (the pre-flight check says so)
    tail = np.fromfile(train.path, dtype=train.dtype, offset=(train.count - n) * train.dtype.itemsize)
    tail.tofile(files[EVAL].path)
    os.truncate(train.path, (train.count - n) * train.dtype.itemsize)
    train.count -= n
    files[EVAL].count = n


# --- the cache --------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """Where tokenized corpora and trained tokenizers are kept (the cache folder's corpus/)."""
    path = get_settings().cache_path / "corpus"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(**spec: Any) -> str:
    """A folder name for `spec` (JSON values): equal specs, equal folders."""
    text = json.dumps({"format": FORMAT, **spec}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def remove_stale(root: Path, now: float | None = None) -> list[str]:
    """Staging folders left by dead workers (untouched for STALE_SECONDS); returns their names."""
    now = time.time() if now is None else now
    removed = []
    for staging in root.glob(".*.partial"):
        newest = max((p.stat().st_mtime for p in staging.rglob("*")), default=staging.stat().st_mtime)
        if now - newest > STALE_SECONDS:
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging.name)
    return removed


def build_once(folder: Path, write: Callable[[Path], None]) -> bool:
    """Make `folder` by `write(staging)` unless it exists; True if this call built it.

    `write` fills a staging folder, which is renamed into place whole: a crash leaves a `.partial` folder that is
    never read, and two workers building the same entry at once both end with one complete folder."""
    if folder.is_dir():
        return False
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    staging.mkdir(parents=True)
    try:
        write(staging)
        os.rename(staging, folder)
    except OSError:
        if not folder.is_dir():
            raise
        # Another worker renamed its own copy into place first: the same bytes, keep theirs.
        return False
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


@dataclass(frozen=True)
class TokenCorpus:
    """A tokenized corpus on disk: train.bin and eval.bin, each a stream of token ids, and their metadata."""

    folder: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, folder: Path) -> "TokenCorpus":
        return cls(folder, json.loads((folder / META).read_text()))

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.meta["dtype"])

    def tokens(self, part: str) -> int:
        return int(self.meta["tokens"][part])

    @property
    def eval_source(self) -> str:
        """ "documents" (held-out documents), "tail" (the stream's end) or "none"."""
        return str(self.meta["eval_source"])

    def stream(self, part: str) -> np.ndarray:
        """The whole part as a read-only memory map (for tests and statistics; training reads `blocks`)."""
        if not self.tokens(part):
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.folder / f"{part}.bin", dtype=self.dtype, mode="r")

    def blocks(self, part: str, block_size: int) -> "TokenBlocks":
        return TokenBlocks(self.folder / f"{part}.bin", self.dtype, self.tokens(part), block_size)


def tokenize_corpus(
    dataset: DatasetRef,
    tokenizer: PreTrainedTokenizerBase,
    holdout: Holdout,
    progress: ProgressFn = no_progress,
) -> tuple[TokenCorpus, bool]:
    """`dataset` tokenized with `tokenizer` and split by `holdout`, from the cache or built now; (the corpus,
    whether this call built it)."""
    root = cache_root()
    remove_stale(root)
    key = cache_key(
        dataset=dataset.sha256,
        options=dataset.options,
        tokenizer=tokenizer_fingerprint(tokenizer),
        fraction=holdout.fraction,
        seed=holdout.seed if holdout.fraction > 0 else 0,
        limit=holdout.limit,
    )
    folder = root / key

    def write(staging: Path) -> None:
        meta = write_corpus(staging, documents(dataset), tokenizer, holdout.fresh(), progress)
        meta["dataset"] = dataset.summary()
        (staging / META).write_text(json.dumps(meta, indent=1))

    built = build_once(folder, write)
    return TokenCorpus.open(folder), built


# --- reading blocks back ----------------------------------------------------------------------------------


class TokenBlocks(Dataset[Example], Sequence[Example]):
    """A map-style dataset of consecutive `block_size`-token blocks of a token file, read by slicing it.

    Block i is tokens [i*block_size, (i+1)*block_size): the blocks cover the stream, and the Trainer's seeded
    sampler draws them in a random order (the same order again on a resume). A short last block is kept unless it
    is a lone token, which has nothing to predict, as `workers.data.pack_blocks` does. Each read maps only its
    own block and lets it go (nanoGPT maps the file afresh per batch for the same reason): a long-lived map of
    the whole file would count every page ever read in the worker's resident memory."""

    def __init__(self, path: Path, dtype: np.dtype[Any], n_tokens: int, block_size: int) -> None:
        self.path, self.dtype, self.n_tokens, self.block_size = path, dtype, n_tokens, block_size
        full, tail = divmod(n_tokens, block_size)
        self._length = full + (tail >= 2)

    def __len__(self) -> int:
        return self._length

    @property
    def tokens(self) -> int:
        """Tokens in the blocks (all of the stream but a lone last token)."""
        return min(self.n_tokens, self._length * self.block_size)

    @overload
    def __getitem__(self, index: int) -> Example: ...
    @overload
    def __getitem__(self, index: slice) -> list[Example]: ...
    def __getitem__(self, index: int | slice) -> Example | list[Example]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"block {index} of {self._length}")
        start = index * self.block_size
        n = min(self.block_size, self.n_tokens - start)
        window = np.memmap(self.path, dtype=self.dtype, mode="r", offset=start * self.dtype.itemsize, shape=(n,))
        ids: list[int] = window.tolist()
        del window  # unmapped here, not whenever the garbage collector gets to it
        return {"input_ids": ids, "labels": list(ids)}

    def __iter__(self) -> Iterator[Example]:
        return (self[i] for i in range(self._length))
