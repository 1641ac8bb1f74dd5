"""The names of the synthetic episode tasks, importable without torch or numpy (the CLI lists them)."""

TASKS = ("appearance", "shapes")
