"""Lecture 27: (to be written)."""

__all__: list[str] = []
