"""The OpenAI-compatible API (/v1): a thin translation onto the studio's datasets, jobs, models and playground."""
