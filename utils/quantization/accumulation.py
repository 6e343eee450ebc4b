"""Lecture 28: (to be written)."""

__all__: list[str] = []
