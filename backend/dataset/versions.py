"""Dataset versions: every edit or fix is a new immutable dataset whose parent is the one it came from."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db import Dataset

MAX_DEPTH = 1000  # a parent chain longer than this is a cycle or corrupt data, not a history


def root_of(session: Session, dataset: Dataset) -> Dataset:
    """The first version of the lineage `dataset` belongs to."""
    current, seen = dataset, {dataset.id}
    while current.parent_id is not None and len(seen) < MAX_DEPTH:
        parent = session.get(Dataset, current.parent_id)
        if parent is None or parent.id in seen or parent.owner_id != dataset.owner_id:
            break
        current = parent
        seen.add(parent.id)
    return current


def lineage(session: Session, *, dataset: Dataset) -> list[Dataset]:
    """Every version descended from the same first version (the caller checked access), oldest first."""
    found = {(root := root_of(session, dataset)).id: root}
    frontier = [root.id]
    while frontier and len(found) < MAX_DEPTH:
        query = select(Dataset).where(Dataset.parent_id.in_(frontier), Dataset.owner_id == dataset.owner_id)
        children = [c for c in session.scalars(query) if c.id not in found]
        found.update((c.id, c) for c in children)
        frontier = [c.id for c in children]
    return sorted(found.values(), key=lambda d: (d.version, d.id))
