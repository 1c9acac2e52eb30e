"""Sequence classification: a causal base model with a new linear head over its last token (e.g. SST-2 sentiment).

Read top to bottom: the label set of the data → base model loaded as `AutoModelForSequenceClassification` (Llama
→ LlamaForSequenceClassification: the transformer, then `score`, a freshly initialized hidden → classes matrix)
→ each text tokenized as it will be at inference → the method (LoRA/QLoRA also train and save the head in full;
freeze trains the top layers and the head) → `transformers.Trainer` with cross-entropy, accuracy and macro F1 at
each evaluation → adapter.zip or model.zip, whose config maps class ids to the dataset's label names.

A causal model reads left to right, so only the last real token has seen the whole text: its hidden state is
what the head classifies. The model finds it as the last token that is not padding, so batches are padded on
the right with a pad id that never occurs inside a text.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from peft import TaskType
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    EvalPrediction,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)

from backend.job.lifecycle import log_event, record_samples
from backend.job.preflight import DataCheck
from workers.artifacts import export, export_merged
from workers.context import JobContext
from workers.data import split_holdout
from workers.examples import Example, load_tokenizer
from workers.methods import apply_method, load_base
from workers.metrics import Guards, Watch, check_in
from workers.preflight import class_counts, enforce, evaluation_asked
from workers.ranks import is_main
from workers.training import build_trainer, final_losses, record_resolved_config, train, training_arguments

Records = list[dict[str, Any]]
Label = str | int
FINAL_METRICS = ("eval_accuracy", "eval_f1")  # for the model card


# --- labels ---------------------------------------------------------------------------------------------------------


def label_names(*record_sets: Records) -> list[str]:
    """The sorted label set (integers in numeric order, before any names); a class id is a position in it."""
    labels: set[Label] = {r["label"] for records in record_sets for r in records}
    ordered = sorted(labels, key=lambda v: (isinstance(v, str), v))
    if len(ordered) < 2:
        raise ValueError(f"classification needs at least two labels; the data has only {ordered}")
    # Names are strings in the saved config (JSON keys), so 0 and "0" would clash: the reader already turns
    # integer-looking strings into ints, so a clash means the same label spelled twice.
    names = [str(v) for v in ordered]
    if len(set(names)) < len(names):
        raise ValueError(f"labels {ordered} name the same class twice")
    return names


# --- data -----------------------------------------------------------------------------------------------------------


def class_examples(
    ctx: JobContext, tokenizer: PreTrainedTokenizerBase, records: Records, names: list[str]
) -> list[Example]:
    """{"input_ids", "labels": [class id]} per record, cut at max_length (keeping the start of the text)."""
    ids_of = {name: i for i, name in enumerate(names)}
    max_length = ctx.hp.max_length
    examples: list[Example] = []
    truncated = 0
    for record in records:
        # Tokenized exactly as `tokenizer(text)` at inference, with whatever special tokens the base adds.
        ids = list(tokenizer(record["text"])["input_ids"])
        truncated += len(ids) > max_length
        examples.append({"input_ids": ids[:max_length], "labels": [ids_of[str(record["label"])]]})
    if truncated:
        log_event(ctx.job_id, f"{truncated} of {len(records)} texts were cut at max_length={max_length}", "warning")
    return examples


def class_split(
    ctx: JobContext, tokenizer: PreTrainedTokenizerBase, records: Records, held_out: Records | None, names: list[str]
) -> tuple[list[Example], list[Example], DataCheck]:
    """Training and eval examples, and the pre-flight check: texts are cut, never dropped, but every class
    needs examples to be learned and evaluated."""
    examples = class_examples(ctx, tokenizer, records, names)
    if held_out is not None:
        train, held = examples, class_examples(ctx, tokenizer, held_out, names)
    else:
        train, held = split_holdout(examples, ctx.hp.validation_fraction, ctx.hp.seed)
    asked, source = evaluation_asked(ctx)
    check = DataCheck(
        unit="records",
        total=len(records),
        kept=len(examples),
        max_length=ctx.hp.max_length,
        classes=class_counts(r["label"] for r in records),
        validation=len(held) if asked else None,
        validation_source=source,
    )
    return train, held, check


@dataclass
class ClassCollator:
    """Right-pads input_ids with the pad id (attention mask 0 there); one label per sequence."""

    pad_token_id: int

    def __call__(self, features: list[Example]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            input_ids[i, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
            attention_mask[i, : len(f["input_ids"])] = 1
        labels = torch.tensor([f["labels"][0] for f in features], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# --- metrics --------------------------------------------------------------------------------------------------------


def accuracy_and_f1(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Accuracy, and macro F1: the unweighted mean over classes of 2·TP / (2·TP + FP + FN).

    Macro averaging gives a rare class as much say as a common one, so a model that always answers the
    majority class scores high accuracy but low F1. Classes are those that occur in either array.
    """
    f1s = []
    for c in np.union1d(predicted, actual):
        tp = np.sum((predicted == c) & (actual == c))
        fp = np.sum((predicted == c) & (actual != c))
        fn = np.sum((predicted != c) & (actual == c))
        f1s.append(2 * tp / (2 * tp + fp + fn))  # > 0 denominator: c occurs in one of the arrays
    return {"accuracy": float(np.mean(predicted == actual)), "f1": float(np.mean(f1s))}


def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """The Trainer's hook at each evaluation: logits and labels of the whole eval set → eval_accuracy, eval_f1."""
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return accuracy_and_f1(np.asarray(logits).argmax(-1), np.asarray(prediction.label_ids))


def last_logged(history: list[dict[str, Any]], key: str) -> Any:
    return next((e[key] for e in reversed(history) if key in e), None)


# --- watch prompts: the predicted label and its probability --------------------------------------------------------


@torch.no_grad()
def classify(model: nn.Module, tokenizer: PreTrainedTokenizerBase, text: str, names: list[str]) -> str:
    """e.g. "positive (p=0.93)": the most likely label and its softmax probability."""
    inputs = tokenizer(text, return_tensors="pt").to(next(model.parameters()).device)
    was_training = model.training
    model.eval()  # no dropout: the same weights give the same answer
    try:
        probabilities = model(**inputs).logits[0].float().softmax(-1)
    finally:
        model.train(was_training)
    best = int(probabilities.argmax())
    return f"{names[best]} (p={probabilities[best].item():.2f})"


class ClassifyWatch(TrainerCallback):
    """Answers the watch prompts at every evaluation with a label instead of generated text."""

    def __init__(self, job_id: int, prompts: tuple[str, ...], names: list[str], guards: Guards) -> None:
        # The JobCallback's guards: their log_after moves on a rollback, and steps are answered once.
        self.job_id, self.prompts, self.names, self.guards = job_id, prompts, names, guards

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        model, tokenizer = kwargs.get("model"), kwargs.get("processing_class")
        # Rank 0 alone under data parallel: it stores the rows, and the others hold the same weights.
        asked = self.prompts and is_main() and self.guards.is_new(state.global_step)
        if asked and model is not None and tokenizer is not None:
            answers = [(p, classify(model, tokenizer, p, self.names)) for p in self.prompts]
            record_samples(self.job_id, state.global_step, answers)


LOADING = """\
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model = AutoModelForSequenceClassification.from_pretrained("path/to/unzipped")
tokenizer = AutoTokenizer.from_pretrained("path/to/unzipped")
logits = model(**tokenizer("some text", return_tensors="pt")).logits
print(model.config.id2label[int(logits.argmax(-1))])
"""
ADAPTER_LOADING = """\
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

labels = {labels!r}
base = AutoModelForSequenceClassification.from_pretrained(
    "path/to/base", num_labels=len(labels), id2label=labels, label2id={{v: k for k, v in labels.items()}}
)
model = PeftModel.from_pretrained(base, "path/to/unzipped")  # the LoRA update and the trained head
tokenizer = AutoTokenizer.from_pretrained("path/to/unzipped")
base.config.pad_token_id = tokenizer.pad_token_id
logits = model(**tokenizer("some text", return_tensors="pt")).logits
print(labels[int(logits.argmax(-1))])
"""


# --- the recipe -----------------------------------------------------------------------------------------------------


def run(ctx: JobContext) -> None:
    hp = ctx.hp
    assert ctx.base_model_path is not None, "a classification job has a base model"
    set_seed(hp.seed)

    # --- labels and base model with a new head -----------------------------------------------------------
    records = list(ctx.dataset.records())
    held_out = list(ctx.validation_dataset.records()) if ctx.validation_dataset else None
    names = label_names(records, held_out or [])
    id2label = dict(enumerate(names))
    head: dict[str, Any] = {  # from_pretrained keywords
        "num_labels": len(names),
        "id2label": id2label,
        "label2id": {name: i for i, name in id2label.items()},
        "problem_type": "single_label_classification",  # softmax + cross-entropy over exclusive classes
    }
    tokenizer = load_tokenizer(ctx.base_model_path)
    # --- data, checked before the base model is loaded ---------------------------------------------------
    train_set, eval_set, check = class_split(ctx, tokenizer, records, held_out, names)
    enforce(ctx, check)
    log_event(ctx.job_id, f"{len(records)} records → {len(train_set)} training and {len(eval_set)} eval examples")
    check_in(ctx.job_id)

    base = load_base(ctx, AutoModelForSequenceClassification, **head)
    # The head reads the last token that is not padding: the model must know which id pads.
    base.config.pad_token_id = tokenizer.pad_token_id
    log_event(ctx.job_id, f"{len(names)} labels: {', '.join(names)}")
    check_in(ctx.job_id)

    # --- method: SEQ_CLS makes PEFT train and save the head in full beside the low-rank update ------------
    model = apply_method(ctx, base, TaskType.SEQ_CLS)

    # --- train -----------------------------------------------------------------------------------------
    record_resolved_config(ctx, model, train_examples=len(train_set), eval_examples=len(eval_set), labels=names)
    args = training_arguments(ctx, n_train=len(train_set), n_eval=len(eval_set))
    # Accuracy and F1 need the predictions, not only the loss (logits are batch x classes here: small).
    args.prediction_loss_only = False
    args.label_names = ["labels"]
    pad_id = tokenizer.pad_token_id
    assert pad_id is not None
    trainer, callback = build_trainer(
        ctx,
        model,
        tokenizer,
        train_set,
        eval_set,
        args=args,
        data_collator=ClassCollator(pad_id),
        compute_metrics=compute_metrics,
    )
    # A classifier cannot generate: its watch prompts get a label and its probability instead.
    callback.watch = Watch()
    trainer.add_callback(ClassifyWatch(ctx.job_id, ctx.watch_prompts, names, callback.guards))
    train(trainer, callback, ctx.resume_checkpoint)

    # --- outputs: a classifier, not a causal LM, so it does not become a base model ----------------------
    loss, eval_loss = final_losses(trainer)
    metrics = {k: v for k in FINAL_METRICS if (v := last_logged(trainer.state.log_history, k)) is not None}
    card: dict[str, Any] = {
        "final_loss": loss,
        "final_eval_loss": eval_loss,
        "details": {"labels": id2label},
        "metrics": metrics,
    }
    if not ctx.method_spec.adapter:
        export(ctx, model, tokenizer, what="model", loading=LOADING, **card)
        return
    adapter = export(ctx, model, tokenizer, what="adapter", loading=ADAPTER_LOADING.format(labels=id2label), **card)
    # The same classifier as a plain model (the update folded into the base, the head beside it): no peft needed.
    export_merged(
        ctx, adapter, tokenizer, auto_class=AutoModelForSequenceClassification, loading=LOADING, **card, **head
    )
