"""Test support: real brokers and polling helpers (importable as ``support`` via pytest's pythonpath)."""
