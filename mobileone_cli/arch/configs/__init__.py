"""Data files: the built-in architecture table (builtin.yaml)."""
