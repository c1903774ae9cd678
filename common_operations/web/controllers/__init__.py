"""Litestar controllers; each one decodes, calls the service layer and encodes."""
