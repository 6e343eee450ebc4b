"""Lecture 26: (to be written)."""

__all__: list[str] = []
