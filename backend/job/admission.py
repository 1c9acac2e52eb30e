"""Admitting a new job and queueing it: what POST /api/jobs, clone, resume and the /v1 API's jobs share."""

from sqlalchemy.orm import Session

from backend.db import Job, User
from backend.events import publish
from backend.job import estimate, service
from backend.job.schemas import JobCreate, JobRead
from backend.work.kinds import JOB
from backend.work.send import send


def admit(session: Session, user: User, body: JobCreate, job: Job) -> None:
    """The pre-flight check and the memory fit; a refusal rolls the new job back before anything is committed."""
    admitted = estimate.admit(session, user=user, body=body)
    # The planned steps until the worker counts its own: a queued job reads "0 / 120" in every list, not "0 / ?".
    job.total_steps = admitted.steps
    # What placement routes it by; a forced job's memory is not judged there either (the person overrode it).
    cuda, cpu = admitted.memory_bytes_cuda, admitted.memory_bytes_cpu
    job.needs = {} if body.force or cuda is None or cpu is None else {"memory_cuda": cuda, "memory_cpu": cpu}
    if admitted.disk_bytes is not None:
        job.needs["disk"] = admitted.disk_bytes  # judged even when forced: a full disk fails the run for sure


def enqueue(session: Session, job: Job) -> JobRead:
    """Commit the job, send it to the workers (or note that the broker was down) and publish the change."""
    session.commit()  # the worker must find the row when the task arrives
    if not send(JOB, job.id):
        service.note_unsent(session, job=job)
        session.commit()
    session.refresh(job)  # placement (in its own transaction) may have said why it waits
    publish(job.id)  # the live jobs lists show the new (or re-queued) job without waiting for the worker
    return service.to_read(session, job)
