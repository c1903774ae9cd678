"""The operator console (``/console``): server-rendered pages over the task service, htmx, and SSE."""
