"""Adapters to backing services (Temporal client, embedded servers)."""
