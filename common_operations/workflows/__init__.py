"""Temporal workflows (deterministic; import only stdlib, temporalio and ``domain``)."""
