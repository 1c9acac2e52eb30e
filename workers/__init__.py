"""Background workers: the only package that imports torch, transformers and peft.

`workers.main` is the Celery entry point, `workers.tasks` claims and runs jobs, and `workers.recipes` holds
one self-contained training recipe per job kind.
"""
