"""Temporal activities: the I/O side of workflows."""
