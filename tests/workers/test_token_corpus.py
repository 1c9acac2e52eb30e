"""Token files of pretraining corpora (`workers.corpus`): written once per dataset version and tokenizer, split
into held-out documents honestly, read back as blocks, and never taken for whole when a write was cut short."""

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from backend.dataset.formats import summarize
from backend.job import lifecycle
from tests.workers.support import PRETRAIN_HP, Seed, create_job, get_job, messages
from tests.workers.tokenizers import FABLES, plain_tokenizer
from workers import corpus, metrics, training
from workers.context import DatasetRef
from workers.corpus import EVAL, TRAIN, Encoder, Holdout, TokenBlocks, token_dtype, tokenize_corpus
from workers.data import train_tokenizer
from workers.recipes import pretrain
from workers.tasks import run_job


def dataset_of(path: Path) -> DatasetRef:
    """A stored dataset as the worker sees it, for a file written by the test."""
    summary = summarize(path, path.name)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return DatasetRef(0, path.stem, str(path), path.name, sha, summary.shape, summary.options)


def write_docs(path: Path, docs: list[str]) -> DatasetRef:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return dataset_of(path)


def numbered_docs(n: int) -> list[str]:
    # Lengths vary tenfold, so the held-out share has to be counted in characters, not documents.
    return [f"document {i} " + "word " * (5 + (i * 7) % 50) for i in range(n)]


def split_on_eos(stream: np.ndarray, eos: int) -> list[list[int]]:
    ends = np.flatnonzero(stream == eos)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [stream[s:e].tolist() for s, e in zip(starts, ends, strict=True)]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return plain_tokenizer()


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of this test's own (the session's data folder holds the entries other tests made)."""
    root = tmp_path / "cache"
    root.mkdir()
    monkeypatch.setattr(corpus, "cache_root", lambda: root)
    return root


def test_dtype_follows_the_vocabulary_size() -> None:
    assert token_dtype(2048) == np.uint16
    assert token_dtype(2**16) == np.uint16  # ids 0..65535 fit
    assert token_dtype(2**16 + 1) == np.uint32
    assert token_dtype(151_646) == np.uint32  # Qwen-sized vocabularies


def test_encoder_gives_the_tokenizers_own_ids_each_followed_by_eos(tokenizer: PreTrainedTokenizerBase) -> None:
    docs = FABLES.read_text().split("\n\n")[:5]
    ids = Encoder(tokenizer, np.dtype(np.uint16))(docs)
    expected = [
        i for doc in tokenizer(docs, add_special_tokens=False)["input_ids"] for i in [*doc, tokenizer.eos_token_id]
    ]
    assert ids.dtype == np.uint16 and ids.tolist() == expected


def test_written_once_then_reused_without_tokenizing(
    own_cache: Path, tmp_path: Path, tokenizer: PreTrainedTokenizerBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = write_docs(tmp_path / "docs.jsonl", numbered_docs(200))
    first, built = tokenize_corpus(dataset, tokenizer, Holdout(0.1, seed=0))
    assert built and first.tokens(TRAIN) > 0 and first.tokens(EVAL) > 0
    assert first.dtype == np.uint16 and (first.folder / "train.bin").stat().st_size == 2 * first.tokens(TRAIN)

    def refuse(self: Encoder, texts: list[str]) -> np.ndarray:
        raise AssertionError("tokenized again")

    monkeypatch.setattr(Encoder, "__call__", refuse)
    second, built = tokenize_corpus(dataset, tokenizer, Holdout(0.1, seed=0))
    assert not built and second.folder == first.folder
    # Another split, or another tokenizer, is another entry.
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize_corpus(dataset, tokenizer, Holdout(0.1, seed=1))
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize_corpus(dataset, plain_tokenizer_of_size(500), Holdout(0.1, seed=0))


def plain_tokenizer_of_size(size: int) -> PreTrainedTokenizerBase:
    return train_tokenizer(FABLES.read_text().split("\n\n"), vocab_size=size)


def test_blocks_cover_the_stream(own_cache: Path, tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    docs = numbered_docs(60)
    built, _ = tokenize_corpus(write_docs(tmp_path / "docs.jsonl", docs), tokenizer, Holdout(0.0, seed=0))
    stream = built.stream(TRAIN)
    expected = [i for doc in tokenizer(docs, add_special_tokens=False)["input_ids"] for i in [*doc, 0]]
    assert stream.tolist() == expected  # EOS (id 0) after every document, in file order
    blocks = built.blocks(TRAIN, 16)
    assert all(len(b["input_ids"]) == 16 for b in blocks[:-1]) and 2 <= len(blocks[-1]["input_ids"]) <= 16
    assert [i for b in blocks for i in b["input_ids"]] == expected[: blocks.tokens]
    assert len(expected) - blocks.tokens <= 1  # at most a lone last token, which has nothing to predict
    assert all(b["labels"] == b["input_ids"] for b in blocks)
    assert blocks[-1] == blocks[len(blocks) - 1] and blocks[1:3] == [blocks[1], blocks[2]]
    with pytest.raises(IndexError):
        blocks[len(blocks)]


def test_a_lone_last_token_makes_no_block(tmp_path: Path) -> None:
    path = tmp_path / "t.bin"
    np.arange(33, dtype=np.uint16).tofile(path)
    assert len(TokenBlocks(path, np.dtype(np.uint16), 33, 16)) == 2  # 16 + 16 + a lone token
    assert len(TokenBlocks(path, np.dtype(np.uint16), 34, 16)) == 3  # a last block of 2 tokens is kept
    assert len(TokenBlocks(path, np.dtype(np.uint16), 0, 16)) == 0


def test_held_out_documents_are_never_in_the_training_file(
    own_cache: Path, tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    docs = numbered_docs(400)
    built, _ = tokenize_corpus(write_docs(tmp_path / "docs.jsonl", docs), tokenizer, Holdout(0.1, seed=3))
    assert built.eval_source == "documents"
    eos = tokenizer.eos_token_id

    def texts(part: str) -> set[str]:
        return {str(tokenizer.decode(d)) for d in split_on_eos(np.asarray(built.stream(part)), eos)}

    train, held = texts(TRAIN), texts(EVAL)
    assert not train & held
    assert train | held == set(docs)  # every document whole, in one part or the other
    held_chars = sum(len(d) for d in held)
    assert 0.08 < held_chars / sum(map(len, docs)) < 0.12  # about the fraction, counted in text
    # Seeded: the same documents again; another seed, others.
    again = Holdout(0.1, seed=3)
    assert [i for i, d in enumerate(docs) if again.take(i, len(d))] == sorted(docs.index(d) for d in held)
    other = Holdout(0.1, seed=4)
    assert {docs[i] for i, d in enumerate(docs) if other.take(i, len(d))} != held


def test_the_held_out_text_is_capped_whatever_the_fraction() -> None:
    docs = numbered_docs(400)
    total = sum(map(len, docs))
    capped = Holdout(0.5, seed=3, limit=total // 20)
    held = sum(len(d) for i, d in enumerate(docs) if capped.take(i, len(d)))
    assert 0 < held <= total // 20  # not the half the fraction asks for


def test_one_long_document_falls_back_to_the_streams_tail(
    own_cache: Path, tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    text = FABLES.read_text().replace("\n\n", " ")
    built, _ = tokenize_corpus(write_docs(tmp_path / "one.jsonl", [text]), tokenizer, Holdout(0.1, seed=0))
    assert built.eval_source == "tail"
    whole = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    train, held = built.stream(TRAIN).tolist(), built.stream(EVAL).tolist()
    assert train + held == whole
    assert held and abs(len(held) - 0.1 * len(whole)) <= 1
    assert (built.folder / "train.bin").stat().st_size == 2 * len(train)  # truncated, not only counted


def test_the_tokenizer_sample_is_bounded_and_leaves_out_eval_text() -> None:
    docs = numbered_docs(1000)
    holdout = Holdout(0.1, seed=0)
    held = {i for i, d in enumerate(docs) if holdout.take(i, len(d))}
    sample = corpus.tokenizer_sample(iter(docs), budget=5000, rate=0.2, holdout=Holdout(0.1, 0), seed=0)
    assert sample.chars == sum(map(len, sample.texts)) <= 5000 and not sample.whole
    assert not set(sample.texts) & {docs[i] for i in held}
    # Drawn across the corpus at the rate, not the first documents that fill the budget.
    indices = sorted(docs.index(t) for t in sample.texts if t in docs)
    assert indices[-1] > 5 * len(indices)
    # One long document: the sample leaves out the tail the token files will hold out.
    one = corpus.tokenizer_sample(iter(["x" * 1000]), budget=10**6, rate=1.0, holdout=Holdout(0.1, 0), seed=0)
    assert one.whole and one.texts == ["x" * 900]


def test_a_write_cut_short_leaves_no_entry_taken_as_whole(
    own_cache: Path, tmp_path: Path, tokenizer: PreTrainedTokenizerBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = write_docs(tmp_path / "docs.jsonl", numbered_docs(300))
    monkeypatch.setattr(corpus, "BATCH_CHARS", 1000)  # many batches, so the crash lands mid-file

    def crash(done: int, tokens: int) -> None:
        if tokens > 2000:
            raise KeyboardInterrupt  # what a worker's SIGTERM-less death looks like from here

    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus(dataset, tokenizer, Holdout(0.1, 0), crash)
    root = own_cache
    assert not [p for p in root.iterdir() if not p.name.startswith(".")]  # no entry, complete or not

    # A worker killed outright leaves its staging folder: it is never read, and is removed once stale.
    key_folder_before = {p.name for p in root.iterdir()}
    staging = root / ".deadbeef.123.abcd.partial"
    staging.mkdir()
    (staging / "train.bin").write_bytes(b"\x01\x00" * 10)
    built, fresh = tokenize_corpus(dataset, tokenizer, Holdout(0.1, 0))
    assert fresh and built.folder.name not in key_folder_before
    assert built.tokens(TRAIN) == len(built.stream(TRAIN)) > 10
    assert corpus.remove_stale(root, now=time.time() + corpus.STALE_SECONDS + 1) == [staging.name]
    assert not staging.exists()


def test_a_reloaded_tokenizer_maps_the_same_blocks(
    own_cache: Path, tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    # A resumed run reloads the tokenizer its checkpoint saved: same fingerprint, same files, same blocks.
    dataset = write_docs(tmp_path / "docs.jsonl", numbered_docs(100))
    first, _ = tokenize_corpus(dataset, tokenizer, Holdout(0.1, 0))
    tokenizer.save_pretrained(tmp_path / "checkpoint")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "checkpoint")
    assert corpus.tokenizer_fingerprint(reloaded) == corpus.tokenizer_fingerprint(tokenizer)
    second, built = tokenize_corpus(dataset, reloaded, Holdout(0.1, 0))
    assert not built and second.folder == first.folder
    assert list(second.blocks(TRAIN, 32)) == list(first.blocks(TRAIN, 32))


def test_pretrain_job_reports_its_sample_and_reuses_the_token_files(seed: Seed) -> None:
    # A seed of its own: a split, so token files, that no other test of the session made.
    hp = {**PRETRAIN_HP, "max_steps": 4, "eval_steps": 4, "tokenizer_sample_mb": 1, "seed": 7}
    first = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=hp)
    assert run_job(first) == "succeeded"
    said = messages(first)
    assert any("trained a byte-level BPE tokenizer" in m and "MB (tokenizer_sample_mb=1)" in m for m in said)
    assert any(m.startswith("tokenized fables into uint16 token files") for m in said)

    second = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=hp)
    assert run_job(second) == "succeeded"
    said = messages(second)
    assert any("reusing the tokenizer" in m for m in said)
    assert any("reusing the token files of fables" in m for m in said)
    configs = [get_job(j).resolved_config for j in (first, second)]
    assert configs[0]["token_files"] == configs[1]["token_files"]
    assert configs[0]["token_files"]["dtype"] == "uint16" and configs[0]["eval_blocks"] > 0


def test_a_resumed_pretrain_job_maps_the_same_blocks(seed: Seed, monkeypatch: pytest.MonkeyPatch) -> None:
    hp = {**PRETRAIN_HP, "max_steps": 8, "eval_steps": 8, "checkpoint_steps": 4, "seed": 11}
    seen: list[tuple[Path, list[list[int]]]] = []

    def probed(ctx: Any, model: Any, tokenizer: Any, train_set: Any, eval_set: Any, **options: Any) -> Any:
        blocks = [train_set[i]["input_ids"] for i in range(0, len(train_set), max(1, len(train_set) // 7))]
        seen.append((train_set.path, blocks))
        return training.build_trainer(ctx, model, tokenizer, train_set, eval_set, **options)

    monkeypatch.setattr(pretrain, "build_trainer", probed)
    monkeypatch.setattr(metrics, "HEARTBEAT_SECONDS", 0.0)
    real_beat = lifecycle.beat

    def pause_at_4(job: int, *, step: int, total_steps: int | None) -> str:
        if step == 4:  # what POST /pause does, at a known step
            lifecycle.update_job(job, pause_requested=True)
        return real_beat(job, step=step, total_steps=total_steps)

    monkeypatch.setattr(metrics, "beat", pause_at_4)
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=hp)
    assert run_job(job_id) == "paused"
    monkeypatch.setattr(metrics, "beat", real_beat)
    lifecycle.update_job(job_id, status="queued", attempt_base=1)  # as POST /resume: lease.requeue
    assert run_job(job_id) == "succeeded"

    said = messages(job_id)
    assert "reloaded the tokenizer from checkpoint-4" in said
    assert said.count("reusing the token files of fables tokenized by an earlier job") == 1  # the resumed run
    assert len(seen) == 2 and seen[0] == seen[1]  # the same file, the same ids in every block
