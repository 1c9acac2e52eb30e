"""Pretrain a small Llama-style model from random weights on a text dataset.

Read top to bottom: documents → a byte-level BPE tokenizer trained on a bounded sample of them (or another
model's tokenizer, `tokenizer_model`) → the corpus tokenized once into a memory-mapped token file, cached per
dataset version and tokenizer (`workers.corpus`) → blocks of max_length tokens read from it → a randomly
initialized LlamaForCausalLM → next-token prediction with `transformers.Trainer` → model.zip, and the model
joins the owner's base-model list so it can be fine-tuned next.

Memory does not grow with the corpus: records are streamed, never listed; token ids live in a file, not in
Python lists. Data parallel: rank 0 prepares the tokenizer and the token files while the other ranks wait, then
every rank maps the same files.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase, set_seed

from backend.config import get_settings
from backend.job.lifecycle import heartbeat, log_event
from backend.model.presets import PRESETS
from workers.artifacts import export, register_base_model
from workers.context import DatasetRef, JobContext
from workers.corpus import (
    EVAL,
    TRAIN,
    Holdout,
    TokenCorpus,
    build_once,
    cache_key,
    cache_root,
    documents,
    tokenize_corpus,
    tokenizer_sample,
)
from workers.data import borrowed_tokenizer, train_tokenizer
from workers.metrics import Cancelled, check_in
from workers.preflight import enforce, packed_check
from workers.ranks import is_main, share
from workers.training import build_trainer, final_losses, parameter_counts, record_resolved_config, train

MB = 10**6
EVENT_SECONDS = 30.0  # a progress line in the job's events this often while a large corpus is tokenized

# --- rank 0 prepares, the other ranks wait for it ---------------------------------------------------------
# While rank 0 tokenizes, every check of the cancel flag is broadcast as BUILDING or STOP, and the end as
# ("done", what was prepared): the other ranks wait in `await_main`, which follows those broadcasts, so a cancel
# stops every rank and a crash of rank 0 ends the run (torchrun stops the ranks still waiting).
BUILDING, STOP = "building", "stop"


def keep_alive(job_id: int) -> None:
    """Rank 0, during a long preparation: renew the lease, and stop every rank if a cancel was asked."""
    stop = heartbeat(job_id, step=None, total_steps=None)
    share(STOP if stop else BUILDING)
    if stop:
        raise Cancelled()


def await_main() -> Any:
    """The other ranks: wait until rank 0 has prepared the data; what it prepared."""
    while True:
        message = share(None)
        if message == STOP:
            raise Cancelled()
        if isinstance(message, tuple):
            return message[1]


class Reporter:
    """Rank 0's reports while a corpus is tokenized: a line in the events every EVENT_SECONDS, a lease renewal
    and cancel check every heartbeat."""

    def __init__(self, job_id: int, dataset: DatasetRef) -> None:
        self.job_id, self.name = job_id, dataset.name
        self.size = dataset.path.stat().st_size  # about the characters to read (plain text; less when gzipped)
        self.began = self.beaten = self.logged = time.monotonic()

    def __call__(self, done: int, tokens: int) -> None:
        now = time.monotonic()
        if now - self.beaten >= get_settings().heartbeat_seconds:
            self.beaten = now
            keep_alive(self.job_id)
        if now - self.logged >= EVENT_SECONDS:
            self.logged = now
            share_done = f" ({min(done / self.size, 0.99):.0%})" if self.size else ""
            log_event(
                self.job_id,
                f"tokenizing {self.name}: {done / MB:,.0f} MB{share_done}, {tokens:,} tokens, "
                f"{done / MB / (now - self.began):.1f} MB/s",
            )

    def finished(self, corpus: TokenCorpus) -> None:
        seconds = time.monotonic() - self.began
        chars = int(corpus.meta["chars"])
        tokens = corpus.tokens(TRAIN) + corpus.tokens(EVAL)
        log_event(
            self.job_id,
            f"tokenized {self.name} into {corpus.dtype.name} token files: {chars / MB:,.1f} MB → {tokens:,} tokens "
            f"in {seconds:.0f} s ({chars / MB / max(seconds, 1e-9):.1f} MB/s)",
        )


# --- the tokenizer ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """What rank 0 prepared, as paths every rank can open: the tokenizer and the token files."""

    tokenizer_dir: Path
    borrowed: bool  # another model's tokenizer, completed by `borrowed_tokenizer` on every rank alike
    train: Path  # a TokenCorpus folder; its train part trains
    eval: Path  # the TokenCorpus folder whose `eval_part` evaluates (empty: no evaluation)
    eval_part: str


def open_tokenizer(folder: Path, borrowed: bool) -> PreTrainedTokenizerBase:
    if borrowed:
        return borrowed_tokenizer(folder)
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return tokenizer


def own_tokenizer(ctx: JobContext, vocab_size: int, holdout: Holdout) -> Path:
    """A byte-level BPE tokenizer fitted to a bounded sample of the training text, from the cache or trained now
    (and cached: the next job on this corpus then also finds its token files)."""
    hp = ctx.hp
    budget = hp.tokenizer_sample_mb * MB
    folder = cache_root() / (
        "tokenizer-"
        + cache_key(
            dataset=ctx.dataset.sha256,
            options=ctx.dataset.options,
            vocab_size=vocab_size,
            sample=budget,
            fraction=holdout.fraction,
            seed=hp.seed,
            limit=holdout.limit,
        )
    )

    def write(staging: Path) -> None:
        began = time.monotonic()
        # Documents drawn across the whole file rather than its head: a corpus sorted by topic or date still gives
        # a vocabulary of all of it. The whole file is read (cheap next to tokenizing it), a sample's worth kept.
        rate = min(1.0, budget / max(1, ctx.dataset.path.stat().st_size))
        docs = documents(ctx.dataset)
        sample = tokenizer_sample(docs, budget=budget, rate=rate, holdout=holdout.fresh(), seed=hp.seed)
        if not sample.documents:  # a handful of huge documents, none drawn: take the first ones instead
            docs = documents(ctx.dataset)
            sample = tokenizer_sample(docs, budget=budget, rate=1.0, holdout=holdout.fresh(), seed=hp.seed)
        tokenizer = train_tokenizer(sample.texts, vocab_size=vocab_size)
        what = "all the training text" if sample.whole else "a sample of the training text"
        log_event(
            ctx.job_id,
            f"trained a byte-level BPE tokenizer with {len(tokenizer)} tokens on {what}: "
            f"{sample.documents:,} documents, {sample.chars / MB:,.1f} MB (tokenizer_sample_mb="
            f"{hp.tokenizer_sample_mb}) in {time.monotonic() - began:.0f} s",
        )
        tokenizer.save_pretrained(staging)

    if not build_once(folder, write):
        log_event(ctx.job_id, f"reusing the tokenizer an earlier job trained on this corpus ({folder.name})")
    return folder


def choose_tokenizer(ctx: JobContext, vocab_size: int, holdout: Holdout) -> tuple[Path, bool]:
    """(the tokenizer's folder, whether it is borrowed from another model)."""
    if ctx.resume_checkpoint is not None:
        # A resumed run must cut the corpus into the very same token ids its checkpointed weights learned: the
        # checkpoint's tokenizer has the fingerprint of the cached token files, which are mapped again.
        log_event(ctx.job_id, f"reloaded the tokenizer from {ctx.resume_checkpoint.name}")
        return ctx.resume_checkpoint, False
    if ctx.tokenizer_model_path is not None:
        # Another model's vocabulary: token ids shared with that model (distillation, comparing runs, serving
        # stacks built for it) instead of a vocabulary fitted to this corpus.
        size = len(borrowed_tokenizer(ctx.tokenizer_model_path))
        log_event(ctx.job_id, f"using the tokenizer in {ctx.tokenizer_model_path} ({size} tokens)")
        return ctx.tokenizer_model_path, True
    return own_tokenizer(ctx, vocab_size, holdout), False


# --- the corpus ------------------------------------------------------------------------------------------


def tokenized(ctx: JobContext, dataset: DatasetRef, tokenizer: PreTrainedTokenizerBase, holdout: Holdout) -> Path:
    reporter = Reporter(ctx.job_id, dataset)
    corpus, built = tokenize_corpus(dataset, tokenizer, holdout, reporter)
    if built:
        reporter.finished(corpus)
    else:
        log_event(ctx.job_id, f"reusing the token files of {dataset.name} tokenized by an earlier job")
    return corpus.folder


def prepare(ctx: JobContext, vocab_size: int) -> Prepared:
    """Rank 0: the tokenizer and the token files, from the cache or made now."""
    if next(documents(ctx.dataset), None) is None:
        raise ValueError("pretraining needs a text dataset (plain text or records with a 'text' field)")
    # Eval text is held out before anything learns from it, the tokenizer included.
    holdout = Holdout(0.0 if ctx.validation_dataset is not None else ctx.hp.validation_fraction, ctx.hp.seed)
    tokenizer_dir, borrowed = choose_tokenizer(ctx, vocab_size, holdout)
    keep_alive(ctx.job_id)
    tokenizer = open_tokenizer(tokenizer_dir, borrowed)
    train_folder = tokenized(ctx, ctx.dataset, tokenizer, holdout)
    if ctx.validation_dataset is not None:
        eval_folder, eval_part = tokenized(ctx, ctx.validation_dataset, tokenizer, Holdout(0.0, 0)), TRAIN
    else:
        eval_folder, eval_part = train_folder, EVAL
    if eval_part == EVAL and TokenCorpus.open(eval_folder).eval_source == "tail":
        log_event(
            ctx.job_id,
            "too few documents to hold whole ones out: the eval part is the last "
            f"{ctx.hp.validation_fraction:.0%} of the token stream",
            "warning",
        )
    return Prepared(tokenizer_dir, borrowed, train_folder, eval_folder, eval_part)


def prepared_on_every_rank(ctx: JobContext, vocab_size: int) -> Prepared:
    """Rank 0 prepares; the others wait for it, then open the same files."""
    if is_main():
        prepared: Prepared = share(("done", prepare(ctx, vocab_size)))[1]
        return prepared
    waited: Prepared = await_main()
    return waited


def run(ctx: JobContext) -> None:
    hp = ctx.hp
    if ctx.architecture not in PRESETS:
        raise ValueError(f"unknown architecture preset {ctx.architecture!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[ctx.architecture]
    # One seed makes the run repeatable: weight init here, then shuffling inside the Trainer (same seed).
    set_seed(hp.seed)

    # --- data: a tokenizer, the corpus as token files, blocks read from them -----------------------------
    prepared = prepared_on_every_rank(ctx, preset["vocab_size"])
    tokenizer = open_tokenizer(prepared.tokenizer_dir, prepared.borrowed)
    # A small corpus runs out of pairs to merge before reaching the preset's size; the model follows the
    # tokenizer, so no embedding row is wasted on a token that can never occur.
    vocab_size = len(tokenizer)
    check_in(ctx.job_id)

    corpus = TokenCorpus.open(prepared.train)
    train_set = corpus.blocks(TRAIN, hp.max_length)
    eval_set = TokenCorpus.open(prepared.eval).blocks(prepared.eval_part, hp.max_length)
    documents_n = sum(corpus.meta["documents"].values())
    n_tokens = train_set.tokens + eval_set.tokens
    log_event(
        ctx.job_id,
        f"{documents_n:,} documents → {n_tokens:,} tokens → {len(train_set):,} training and "
        f"{len(eval_set):,} eval blocks of up to {hp.max_length} tokens",
    )
    enforce(ctx, packed_check(ctx, documents_n, train_set, eval_set, tokens=train_set.tokens))

    check_in(ctx.job_id)

    # --- model: the preset's shape, random weights -----------------------------------------------------
    config = LlamaConfig(
        **{
            **preset,
            "vocab_size": vocab_size,
            # Positions beyond max_position_embeddings would be extrapolated RoPE: make room for max_length.
            "max_position_embeddings": max(preset["max_position_embeddings"], hp.max_length),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    )
    model = LlamaForCausalLM(config)
    tokenizer.model_max_length = config.max_position_embeddings
    _, total = parameter_counts(model)
    log_event(ctx.job_id, f"initialized a {ctx.architecture} Llama model with {total / 1e6:.2f}M parameters")

    # --- train -----------------------------------------------------------------------------------------
    record_resolved_config(
        ctx,
        model,
        vocab_size=vocab_size,
        train_blocks=len(train_set),
        eval_blocks=len(eval_set),
        tokens=n_tokens,
        token_files={"folder": str(corpus.folder), "dtype": corpus.dtype.name, "eval_source": corpus.eval_source},
    )
    trainer, callback = build_trainer(ctx, model, tokenizer, train_set, eval_set)
    train(trainer, callback, ctx.resume_checkpoint)

    # --- outputs: model.zip, and a new base model ------------------------------------------------------
    loss, eval_loss = final_losses(trainer)
    directory = export(
        ctx,
        model,
        tokenizer,
        what="model",
        final_loss=loss,
        final_eval_loss=eval_loss,
        details={"vocab_size": vocab_size, "parameters": total},
    )
    register_base_model(ctx, directory)
