"""Helpers shared by the project's own tests (the CLI runner, its one-clear-line check)."""
