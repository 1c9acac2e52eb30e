"""What an operator watches: Prometheus metrics (`metrics.py`, served by `router.py`) and JSON logs (`logs.py`)."""
