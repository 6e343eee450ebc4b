"""Diagrams drawn with matplotlib, so they render in JupyterLab, on GitHub and in Colab (Lectures 03-08).

Each function draws one picture of an idea (a GPT block and its data flow, the sliding window
over token ids, the memory layout of attention heads) and returns the matplotlib figure.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
