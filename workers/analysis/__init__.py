"""The analysis worker's computations: token statistics, dry-run renders and hygiene of a dataset."""
