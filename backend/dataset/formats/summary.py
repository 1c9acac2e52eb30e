"""The validating walk: every record of a file read once, errors and warnings collected (the first 50 of each
and their totals), in memory that does not grow with the file (duplicates: 8-byte hashes for the first 4M
records, a fixed-size Bloom filter after them, so duplicate counts past 4M records are approximate)."""

import json
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.dataset.formats import text
from backend.dataset.formats.columns import Unread, column_warnings
from backend.dataset.formats.errors import FormatError, LimitExceeded, ProblemLog, UnsupportedFile
from backend.dataset.formats.layouts import Record
from backend.dataset.formats.limits import Limits
from backend.dataset.formats.options import ReadOptions, parse_options
from backend.dataset.formats.plan import Plan, canonical, make_plan
from backend.dataset.formats.source import Readable, Source
from backend.dataset.formats.values import display

MAX_LABELS = 10_000
LABELLED = ("classification", "unpaired_preference")  # shapes whose labels are counted
Warning_ = tuple[str | None, str, str]  # (field, code, message)


@dataclass
class Summary:
    reader: str  # file type: text, json, jsonl, csv, parquet
    format: str  # layout: text, jsonl_text, alpaca, sharegpt, openai, prompt_completion, preference, ...
    shape: str  # canonical shape: text, prompt_completion, messages, preference, classification
    record_count: int
    confidence: float = 1.0
    columns: list[str] = field(default_factory=list)  # source columns/keys seen in the first records
    options: dict[str, Any] = field(default_factory=dict)  # effective options: read_records needs them
    compressed: bool = False
    preview: list[Record] = field(default_factory=list)  # first canonical records
    sample: list[dict[str, Any]] = field(default_factory=list)  # first source rows, as they are in the file
    errors: list[dict[str, Any]] = field(default_factory=list)  # first 50: {line, field, message}
    error_count: int = 0
    warnings: list[dict[str, Any]] = field(default_factory=list)  # first 50: {line, field, message, code}
    warning_count: int = 0
    complete: bool = True  # False when the walk stopped at max_records
    notes: list[str] = field(default_factory=list)  # how the file was read, and why confidence is below 1

    @property
    def layout(self) -> str:
        return self.format


def summarize(
    path: Path | Readable,
    filename: str,
    options: ReadOptions | dict[str, Any] | None = None,
    *,
    limits: Limits | None = None,
    preview_rows: int = 5,
    max_records: int = 0,
) -> Summary:
    """Read every record of a file (or the first `max_records`): detection, errors, warnings, first rows.

    Data problems come back in the summary; a file past a size limit raises `LimitExceeded`, an unsupported
    file type `UnsupportedFile`."""
    limits = limits or Limits.from_settings()
    try:
        given = parse_options(options)
        source = Source(path, filename, limits, validating=True)
        plan = make_plan(source, given)
    except (LimitExceeded, UnsupportedFile):
        raise
    except FormatError as exc:
        return Summary("", "", "", 0, confidence=0.0, errors=[exc.as_dict()], error_count=1)
    if plan.problem:
        return _unreadable(plan)
    summary = _walk(plan, limits, preview_rows, max_records)
    if plan.reader == "csv" and summary.error_count and given.quoting is None and plan.options.quoting == "minimal":
        # Quote characters inside unquoted fields (SST-2's TSVs) break csv quoting: try reading them as text.
        plain = make_plan(source, given.model_copy(update={"quoting": "none"}))
        retry = _walk(plain, limits, preview_rows, max_records)
        if retry.error_count == 0:
            return retry
    return summary


def _walk(plan: Plan, limits: Limits, preview_rows: int, max_records: int) -> Summary:
    errors, warnings = ProblemLog(limits.max_errors), ProblemLog(limits.max_errors)
    duplicates, labels, unread = _Duplicates(), Counter[str | int](), Unread()
    preview: list[Record] = []
    check = CHECKS.get(plan.shape)
    fingerprint = FINGERPRINTS.get(plan.shape, _json_hash)
    unit, long_bytes, count, complete = plan.unit, limits.long_record_bytes, 0, True
    long_records, longest = 0, 0
    try:
        for line, record, size in canonical(plan, unread):
            if isinstance(record, FormatError):
                errors.add(record.as_dict())
                continue
            count += 1
            if len(preview) < preview_rows:
                preview.append(record)
            earlier = duplicates.add(fingerprint(record), line)
            if earlier is not None:
                warnings.add(_warning(line, None, "duplicate", f"exact duplicate of {unit} {earlier}"))
            if size < 0:
                size = len(json.dumps(record, ensure_ascii=False).encode())
            if size > long_bytes:
                long_records, longest = long_records + 1, max(longest, size)
                warnings.add(_warning(line, None, "long_record", f"{size} bytes, over long_record_bytes={long_bytes}"))
            if check is not None:
                for where, code, message in check(record):
                    warnings.add(_warning(line, where, code, message))
            if plan.shape in LABELLED and (record["label"] in labels or len(labels) < MAX_LABELS):
                labels[record["label"]] += 1
            if max_records and count >= max_records:
                complete = False
                break
    except LimitExceeded:
        raise
    except FormatError as exc:  # the file cannot be read past this point
        errors.add(exc.as_dict())
    warnings.count += duplicates.total() - duplicates.reported
    if duplicates.approximate:
        warnings.add(_approximate_duplicates(duplicates.approximate), front=True)
    label_warnings = _label_warnings if plan.shape == "classification" else _desirable_warnings
    for warning in label_warnings(labels, limits.label_imbalance_ratio):
        warnings.add(warning, front=True)
    if plan.layout is not None:  # no column dropped without a word: these come first
        for warning in reversed(column_warnings(unread, plan.layout, plan.options.columns, count)):
            warnings.add(warning, front=True)
    if count == 0 and errors.count == 0:
        errors.add({"line": None, "field": None, "message": "the file holds no records"})
    confidence, notes = plan.confidence, list(plan.notes)
    if plan.shape == "unpaired_preference" and labels:  # what KTO will weigh, before any upload
        notes.insert(0, f"read as unpaired preference (objective kto): {desirable_counts(labels)} answers")
    if long_records and plan.reader == "text":  # only a text file's record boundaries are a guess
        cap, why = text.long_record_doubt(plan.options.text_split or "", count, long_records, longest, long_bytes)
        confidence = min(confidence, cap)
        notes.append(why)
        warnings.add(_warning(None, "options.text_split", "split_doubt", why), front=True)
    return Summary(
        reader=plan.reader,
        format=plan.layout.name if plan.layout else "",
        shape=plan.shape,
        record_count=count,
        confidence=confidence,
        columns=plan.columns,
        options=plan.options.effective(),
        compressed=plan.source.compressed,
        notes=notes,
        preview=[display(r, 100_000) for r in preview],
        sample=plan.sample,
        errors=errors.first,
        error_count=errors.count,
        warnings=warnings.first,
        warning_count=warnings.count,
        complete=complete,
    )


def _approximate_duplicates(count: int) -> dict[str, Any]:
    message = (
        f"about {count} exact duplicates after the first {_Duplicates.EXACT:,} records "
        "(counted with a Bloom filter to keep memory flat: approximate)"
    )
    return _warning(None, None, "duplicates_approximate", message)


def _unreadable(plan: Plan) -> Summary:
    assert plan.problem is not None
    return Summary(
        reader=plan.reader,
        format="",
        shape="",
        record_count=0,
        confidence=0.0,
        columns=plan.columns,
        options=plan.options.effective(),
        compressed=plan.source.compressed,
        sample=plan.sample,
        errors=[plan.problem.as_dict()],
        error_count=1,
    )


def _warning(line: int | None, where: str | None, code: str, message: str) -> dict[str, Any]:
    return {"line": line, "field": where, "message": message, "code": code}


class _Duplicates:
    """Exact duplicates in bounded memory.

    The first EXACT records are counted exactly: their 64-bit hashes go into a flat array (8 bytes a record,
    32 MB at most), sorted once at the end. Past that, hashes go through a fixed-size Bloom filter (BLOOM_BITS
    bits, HASHES probes), so duplicates among later records are counted approximately (a few false positives,
    more as the file grows) while memory stays capped. The line of the first copy is kept for the first LINES
    distinct records only, so warnings can name it."""

    EXACT = 4_000_000
    LINES = 10_000
    BLOOM_BITS = 1 << 29  # 64 MB
    HASHES = 5
    BATCH = 1 << 16  # hashes checked against the Bloom filter at a time (vectorized)

    def __init__(self) -> None:
        self.hashes = array("q")
        self.first: dict[int, int] = {}
        self.reported = 0
        self.bloom: np.ndarray | None = None
        self.pending = array("q")
        self.approximate = 0  # duplicates found by the Bloom filter

    def add(self, digest: int, line: int) -> int | None:
        if len(self.hashes) < self.EXACT:
            self.hashes.append(digest)
        else:
            self.pending.append(digest)
            if len(self.pending) >= self.BATCH:
                self._flush()
        earlier = self.first.get(digest)
        if earlier is not None:
            self.reported += 1
        elif len(self.first) < self.LINES:
            self.first[digest] = line
        return earlier

    def total(self) -> int:
        """Records that repeat an earlier one (sorts the exact hashes in place); approximate past EXACT."""
        self._flush()
        if len(self.hashes) < 2:
            return self.approximate
        hashes = np.frombuffer(self.hashes, dtype=np.int64)
        hashes.sort()
        return int(len(hashes) - 1 - np.count_nonzero(hashes[1:] != hashes[:-1])) + self.approximate

    def _flush(self) -> None:
        """Check the pending hashes against the Bloom filter (seeded with the exact ones), then add them."""
        if not self.pending:
            return
        if self.bloom is None:
            self.bloom = np.zeros(self.BLOOM_BITS // 8, dtype=np.uint8)
            self._set(np.frombuffer(self.hashes, dtype=np.int64))
        batch = np.frombuffer(self.pending, dtype=np.int64)
        seen = self._test(batch)
        # A repeat within the batch is a duplicate too: only each hash's first occurrence may be new.
        _, firsts = np.unique(batch, return_index=True)
        repeat = np.ones(len(batch), dtype=bool)
        repeat[firsts] = False
        self.approximate += int(np.count_nonzero(seen | repeat))
        self._set(batch)
        self.pending = array("q")

    def _positions(self, hashes: np.ndarray) -> np.ndarray:
        # HASHES bit positions per hash: multiply by distinct odd constants (wrapping), keep the top bits.
        mixed = hashes.astype(np.uint64)[None, :] * _BLOOM_MULTIPLIERS[: self.HASHES, None]
        return (mixed >> np.uint64(64 - (self.BLOOM_BITS.bit_length() - 1))).astype(np.int64)

    def _set(self, hashes: np.ndarray) -> None:
        assert self.bloom is not None
        for positions in self._positions(hashes):
            np.bitwise_or.at(self.bloom, positions >> 3, (1 << (positions & 7)).astype(np.uint8))

    def _test(self, hashes: np.ndarray) -> np.ndarray:
        assert self.bloom is not None
        found = np.ones(len(hashes), dtype=bool)
        for positions in self._positions(hashes):
            found &= (self.bloom[positions >> 3] >> (positions & 7).astype(np.uint8)) & 1 == 1
        return found


_BLOOM_MULTIPLIERS = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD],
    dtype=np.uint64,
)


def _json_hash(record: Record) -> int:
    return hash(json.dumps(record, sort_keys=True, ensure_ascii=False))


FINGERPRINTS: dict[str, Callable[[Record], int]] = {
    "text": lambda r: hash(r["text"]),
    "prompt_completion": lambda r: hash((r["prompt"], r["completion"], r.get("system"))),
    "classification": lambda r: hash((r["text"], r["label"])),
}


def _conversation(messages: list[dict[str, Any]], where: str) -> Iterator[Warning_]:
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        yield where, "no_assistant", "no assistant turn: nothing to learn from"
    elif roles[-1] == "user":
        yield f"{where}[{len(roles) - 1}]", "ends_on_user", "the conversation ends on a user turn"
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
            yield f"{where}[{i}].content", "empty_assistant", "empty assistant turn"


def _messages_checks(record: Record) -> Iterator[Warning_]:
    return _conversation(record["messages"], "messages")


def _preference_checks(record: Record) -> Iterator[Warning_]:
    if record["chosen"] == record["rejected"]:
        yield "rejected", "identical_pair", "chosen and rejected are the same"
    for side in ("chosen", "rejected"):
        if isinstance(record[side], list):
            for i, m in enumerate(record[side]):
                if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
                    yield f"{side}[{i}].content", "empty_assistant", "empty assistant turn"


CHECKS: dict[str, Callable[[Record], Iterator[Warning_]]] = {
    "messages": _messages_checks,
    "preference": _preference_checks,
}


def _label_warnings(labels: Counter[str | int], ratio: float) -> list[dict[str, Any]]:
    out = []
    if len(labels) >= MAX_LABELS:
        out.append(_warning(None, "label", "many_labels", f"{MAX_LABELS} or more distinct labels: is 'label' right?"))
    if len(labels) == 1:
        (only,) = labels
        out.append(_warning(None, "label", "label_imbalance", f"every record has the same label {display(only, 40)!r}"))
    elif len(labels) > 1:
        (top, most), *_ = labels.most_common(1)
        rare, least = min(labels.items(), key=lambda kv: kv[1])
        if most > ratio * least:
            out.append(
                _warning(
                    None,
                    "label",
                    "label_imbalance",
                    f"label imbalance: {display(top, 40)!r} has {most} records, {display(rare, 40)!r} only {least}",
                )
            )
    return out


def desirable_counts(labels: Counter[Any]) -> str:
    """'18 desirable, 7 undesirable' for the labels of unpaired preference records."""
    return f"{labels[True]:,} desirable, {labels[False]:,} undesirable"


def _desirable_warnings(labels: Counter[Any], ratio: float) -> list[dict[str, Any]]:
    """Unpaired preference: KTO learns from both kinds; say when one is missing or rare (with the counts)."""
    if not labels:
        return []
    counts = desirable_counts(labels)
    if not labels[True] or not labels[False]:
        missing = "desirable" if not labels[True] else "undesirable"
        message = f"{counts}: no {missing} answers, so KTO only has one side to learn from"
        return [_warning(None, "label", "label_imbalance", message)]
    few, many = sorted((labels[True], labels[False]))
    if many > ratio * few:
        message = f"{counts}: unbalanced; KTO's desirable_weight / undesirable_weight can make up for it"
        return [_warning(None, "label", "label_imbalance", message)]
    return []
