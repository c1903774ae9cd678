"""Common Operations: long-running task service orchestrated by Temporal."""
