"""Scheduling, KV storage, prefill, early-stopping decode (torch engine) and the reference
backend."""
