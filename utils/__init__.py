"""Build DeepSeek from Scratch: the course library.

One module per idea, added lecture by lecture (see the README's lecture table):
``runtime`` (01), ``configs`` (02), ``tokenizer``, ``data``, ``gpt``, ``generation``, ``train`` (03),
``attention`` (04-11), ``plotting`` (04), ``diagrams`` (03-11), ``kv_cache`` (09-11),
``mla`` (12-13), ``positional`` (14-16), ``mla_rope`` (17), ``moe`` (18-21), ``trainer`` (22),
``mtp`` (23), ``deepseek_mtp`` (24), ``quantization`` (26-28), ``exercises`` (all lectures).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository root; data files are read from ``ROOT / "data"``."""

DATA_DIR = ROOT / "data"
