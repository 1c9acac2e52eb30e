"""The five kinds of background work, each a table with the lease columns and the task that does it."""

from backend.db import DatasetAnalysis, Export, Generation, Job, Model
from backend.queue import (
    ANALYSIS_QUEUE,
    ANALYZE_DATASET,
    EXPORT_WEIGHTS,
    GENERATE,
    IMPORT_MODEL,
    QUEUE,
    RUN_JOB,
)
from backend.work.lease import Kind

JOB = Kind("job", Job, RUN_JOB, QUEUE, placed=True)
EXPORT = Kind("export", Export, EXPORT_WEIGHTS, ANALYSIS_QUEUE)
GENERATION = Kind("generation", Generation, GENERATE, ANALYSIS_QUEUE)
ANALYSIS = Kind("analysis", DatasetAnalysis, ANALYZE_DATASET, ANALYSIS_QUEUE)
# A model is "importing" while its import waits and while a worker converts it (the lease column tells which).
IMPORT = Kind("import", Model, IMPORT_MODEL, ANALYSIS_QUEUE, queued="importing", running="importing")

KINDS = (JOB, EXPORT, GENERATION, ANALYSIS, IMPORT)
