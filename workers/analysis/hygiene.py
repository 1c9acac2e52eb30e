"""Dataset hygiene: exact and near-duplicates, train/validation leakage, one prompt with conflicting answers.

Exact duplicates (and the prompts and answers compared for conflicts) are the same text once runs of
whitespace are made single spaces, nothing else: `return a+b` and `return a-b` differ. Near-duplicates are
found on normalized text (Unicode NFKC, case-folded, words and punctuation marks as separate tokens, so an
operator still tells two records apart) and share most of their 3-grams of those tokens: the Jaccard
similarity of two 3-gram sets is estimated from MinHash signatures (the share of 128 hash permutations whose
minimum agrees), and LSH (datasketch) finds the candidate pairs without comparing every pair.

One streaming pass builds the index; memory holds a hash per record, a 512-byte signature per distinct
record and the LSH tables. Record indices count from 0 in file order, as the dry run and the preview do.
"""

import hashlib
import json
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasketch import MinHash, MinHashLSH

from workers.analysis.progress import ProgressFn, no_progress

NUM_PERM = 128
SHINGLE_WORDS = 3
PREVIEW_CHARS = 160
# Groups listed per finding (the counts and the drop lists always cover all of them): enough for a person
# to read, while a dataset with 100k duplicates still gives a result of reasonable size.
MAX_GROUPS = 500
# A word, or one punctuation mark / operator: `a+b` is three tokens, and differs from `a-b`.
TOKEN = re.compile(r"\w+|[^\w\s]")


def exact_text(text: str) -> str:
    """Text as compared for exact duplicates and conflicts: only the spacing does not count."""
    return " ".join(text.split())


def normalize(text: str) -> str:
    """Text as compared for near-duplicates: case, spacing and Unicode variants do not count; punctuation does."""
    return " ".join(TOKEN.findall(unicodedata.normalize("NFKC", text).casefold()))


def flatten(value: Any) -> str:
    """A string, or the contents of a list of messages, as one text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_message_text(m) if isinstance(m, dict) else flatten(m) for m in value)
    return "" if value is None else str(value)


def _message_text(message: dict[str, Any]) -> str:
    """A message's content and, for a tool-calling turn, its calls: two turns calling different tools differ."""
    text = flatten(message.get("content", ""))
    calls = message.get("tool_calls")
    return text + (json.dumps(calls, sort_keys=True, ensure_ascii=False) if calls else "")


def record_text(record: dict[str, Any]) -> str:
    """Everything a record says, for duplicate detection."""
    if "messages" in record:
        tools = json.dumps(record["tools"], sort_keys=True, ensure_ascii=False) if record.get("tools") else ""
        return flatten(record["messages"]) + tools
    keys = ("system", "prompt", "completion", "chosen", "rejected", "text", "label")
    return "\n".join(flatten(record[k]) for k in keys if record.get(k) not in (None, ""))


def prompt_and_answer(record: dict[str, Any]) -> tuple[str, str] | None:
    """(what is asked, what is answered), or None for raw text. A conversation's answer is its last
    assistant turn; what came before it is the prompt."""
    if "messages" in record:
        messages = record["messages"]
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None:
            return None
        return flatten(messages[:last]), _message_text(messages[last])
    if "completion" in record and "label" in record:
        # Unpaired preference: several answers to one prompt, desirable and not, are the point; two different
        # desirable ones conflict as SFT answers would.
        return (flatten(record["prompt"]), flatten(record["completion"])) if record["label"] else None
    if "completion" in record:
        return flatten(record.get("system")) + "\n" + record["prompt"], record["completion"]
    if "chosen" in record:
        return flatten(record["prompt"]), flatten(record["chosen"])
    if "label" in record:
        return record["text"], str(record["label"])
    return None


def preview(record: dict[str, Any]) -> str:
    text = " ".join(record_text(record).split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def signature(normalized: str) -> MinHash | None:
    """MinHash of the token 3-grams (the tokens themselves for shorter texts); None for an empty text."""
    words = normalized.split()
    if not words:
        return None
    n = min(SHINGLE_WORDS, len(words))
    shingles = {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}
    m = MinHash(num_perm=NUM_PERM, seed=1)
    m.update_batch([s.encode("utf-8", "surrogatepass") for s in shingles])
    return m


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Estimated Jaccard similarity: the share of permutations whose minimum hash agrees."""
    return float(np.mean(a == b))


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = self.parent.setdefault(x, x)
        while root != self.parent[root]:
            root = self.parent[root]
        while x != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


@dataclass
class Index:
    """What one pass over the training records learns."""

    threshold: float
    lsh: MinHashLSH = field(init=False)
    records: int = 0
    exact: dict[bytes, list[int]] = field(default_factory=lambda: defaultdict(list))
    key_of: dict[int, bytes] = field(default_factory=dict)  # first record of each distinct text → its hash
    signatures: dict[int, np.ndarray] = field(default_factory=dict)
    near: UnionFind = field(default_factory=UnionFind)
    near_similarity: dict[int, float] = field(default_factory=dict)  # smallest similarity that joined a record
    prompts: dict[bytes, list[tuple[int, bytes]]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        self.lsh = MinHashLSH(threshold=self.threshold, num_perm=NUM_PERM)

    def matches(self, m: MinHash) -> list[tuple[int, float]]:
        """Indexed records whose estimated similarity to `m` reaches the threshold."""
        found = ((c, similarity(self.signatures[c], m.hashvalues)) for c in self.lsh.query(m))
        return [(c, s) for c, s in found if s >= self.threshold]

    def add(self, index: int, record: dict[str, Any]) -> None:
        self.records += 1
        text = record_text(record)
        normalized = normalize(text)
        key = digest(exact_text(text))
        pair = prompt_and_answer(record)
        if pair is not None:
            self.prompts[digest(exact_text(pair[0]))].append((index, digest(exact_text(pair[1]))))
        group = self.exact[key]
        group.append(index)
        if len(group) > 1:
            return  # an exact copy: its first occurrence stands for it in the near-duplicate search
        self.key_of[index] = key
        m = signature(normalized)
        if m is None:
            return
        for other, sim in self.matches(m):
            self.near.union(index, other)
            for i in (index, other):
                self.near_similarity[i] = min(self.near_similarity.get(i, 1.0), sim)
        self.signatures[index] = m.hashvalues.astype(np.uint32)
        self.lsh.insert(index, m)


def _near_groups(index: Index) -> list[tuple[list[int], float]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i in index.near.parent:
        groups[index.near.find(i)].append(i)
    found = [sorted(g) for g in groups.values() if len(g) > 1]
    return sorted((g, min(index.near_similarity[i] for i in g)) for g in found)


def _leaks(
    index: Index, validation: Iterable[dict[str, Any]], progress: ProgressFn
) -> tuple[list[dict[str, Any]], int]:
    """Validation records that also occur in the training records, exactly or nearly."""
    leaks, count = [], 0
    for j, record in enumerate(validation):
        progress("comparing", j)
        count += 1
        text = record_text(record)
        normalized = normalize(text)
        same = index.exact.get(digest(exact_text(text)), [])
        m = signature(normalized)
        near = [(c, s) for c, s in index.matches(m) if c not in same] if m is not None else []
        indices = set(same) | {i for c, _ in near for i in index.exact[index.key_of[c]]}
        if indices:
            sim = 1.0 if same else max(s for _, s in near)
            leaks.append(
                {
                    "validation_index": j,
                    "indices": sorted(indices),
                    "similarity": round(sim, 3),
                    "exact": bool(same),
                    "validation_preview": preview(record),
                }
            )
    return leaks, count


def find_issues(
    records: Iterable[dict[str, Any]],
    *,
    threshold: float,
    validation: Iterable[dict[str, Any]] | None = None,
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """The hygiene result, without previews of the training records (`add_previews` fills them in).
    `progress(phase, records done)` hears "hashing" (the training records), then "comparing" (validation)."""
    index = Index(threshold)
    for i, record in enumerate(records):
        progress("hashing", i)
        index.add(i, record)
    exact = sorted(g for g in index.exact.values() if len(g) > 1)
    near = _near_groups(index)
    conflicts: list[dict[str, Any]] = []
    for pairs in index.prompts.values():
        answers = {a for _, a in pairs}
        if len(answers) > 1:
            conflicts.append({"indices": sorted(i for i, _ in pairs), "answers": len(answers)})
    conflicts.sort(key=lambda c: c["indices"])
    leaks, n_validation = _leaks(index, validation, progress) if validation is not None else ([], 0)
    # Each fix keeps the first record of a group of copies; a near-duplicate takes its exact copies with it.
    drop = {
        "exact_duplicates": sorted(i for g in exact for i in g[1:]),
        "near_duplicates": sorted(i for g, _ in near for first in g[1:] for i in index.exact[index.key_of[first]]),
        "conflicting_answers": sorted({i for c in conflicts for i in c["indices"]}),
        "leakage": sorted({i for leak in leaks for i in leak["indices"]}),
    }
    return {
        "threshold": threshold,
        "exact_duplicates": exact[:MAX_GROUPS],
        "near_duplicates": [{"indices": g, "similarity": round(s, 3)} for g, s in near[:MAX_GROUPS]],
        "conflicting_answers": conflicts[:MAX_GROUPS],
        "leakage": leaks[:MAX_GROUPS],
        "counts": {
            "records": index.records,
            "validation_records": n_validation,
            "exact_duplicate_groups": len(exact),
            "near_duplicate_groups": len(near),
            "conflicting_prompts": len(conflicts),
            "leaked_validation_records": len(leaks),
            **{key: len(value) for key, value in drop.items()},
        },
        "drop": drop,
        "previews": {},
    }


def add_previews(result: dict[str, Any], records: Iterable[dict[str, Any]]) -> None:
    """Short texts of every record the listed groups name, keyed by the index as a string (JSON keys)."""
    wanted: set[int] = {i for g in result["exact_duplicates"] for i in g}
    for key in ("near_duplicates", "conflicting_answers", "leakage"):
        wanted |= {i for group in result[key] for i in group["indices"]}
    last = max(wanted, default=-1)
    for i, record in enumerate(records):
        if i > last:
            break
        if i in wanted:
            result["previews"][str(i)] = preview(record)
