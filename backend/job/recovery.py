"""What a training job becomes when its worker is lost (killed, out of memory, machine gone): queued again to
resume from its newest complete checkpoint on any live worker, until `STUDIO_MAX_ATTEMPTS` attempts are spent."""

from sqlalchemy.orm import Session

from backend.db import Job, utcnow
from backend.job.checkpoints import latest_checkpoint
from backend.job.control import drop_after
from backend.job.lifecycle import add_event
from backend.work import lease
from backend.work.kinds import JOB
from backend.work.lease import Expired


def recover_job(session: Session, row: Expired, max_attempts: int) -> bool:
    """Queue the job again from its newest complete checkpoint (True), or end it: cancelled or paused as asked
    while its worker was lost, failed once its attempts are spent."""
    job = session.get(Job, row.id)
    assert job is not None
    lost = f"worker {row.lease_worker} lost at step {job.current_step}"
    checkpoint = latest_checkpoint(job.id)
    if job.cancel_requested:
        if lease.give_up(session, JOB, row, status="cancelled", finished_at=utcnow()):
            add_event(session, job.id, f"{lost} while cancelling; job cancelled")
        return False
    if job.pause_requested:
        resume = checkpoint.key if checkpoint else None
        if lease.give_up(session, JOB, row, status="paused", finished_at=utcnow(), resume_checkpoint=resume):
            where = f"resume continues from {checkpoint.name}" if checkpoint else "no checkpoint to resume from"
            add_event(session, job.id, f"{lost} while pausing; paused ({where})", "warning")
        return False
    if row.spent(max_attempts):
        error = f"{lost} on {row.last_note(max_attempts)}: no attempts left (STUDIO_MAX_ATTEMPTS={max_attempts})"
        if lease.give_up(session, JOB, row, finished_at=utcnow(), error=error):
            add_event(session, job.id, error, "error")
        return False
    step = checkpoint.step if checkpoint else 0
    resumed = lease.take_over(
        session,
        JOB,
        row,
        resume_checkpoint=checkpoint.key if checkpoint else None,
        current_step=step,
        pause_requested=False,
    )
    if not resumed:
        return False
    # The next attempt logs the steps after its checkpoint again: one value per step on every curve.
    dropped = drop_after(session, job, step)
    where = f"resuming from {checkpoint.name}" if checkpoint else "no checkpoint yet, starting over from step 0"
    add_event(session, job.id, f"{lost}: {where} ({row.next_note(max_attempts)})", "warning")
    if dropped:
        add_event(session, job.id, dropped)
    return True
