"""Quantization, built up over Lectures 26-28.

26 :mod:`utils.quantization.int8` (number formats, absmax and zero-point int8, per-tensor,
per-channel and per-group scales), 27 :mod:`utils.quantization.fp8` (E4M3/E5M2, DeepSeek's
1 x 128 tile and 128 x 128 block scaling, the block-scaled matmul, an FP8 linear layer),
28 :mod:`utils.quantization.accumulation` (limited-precision accumulation and promotion,
delayed vs online scaling). Every public name is re-exported here: ``utils.quantization.act_quant``.
"""

from utils.quantization.int8 import *  # noqa: F401,F403  (Lecture 26)
from utils.quantization.fp8 import *  # noqa: F401,F403  (Lecture 27)
from utils.quantization.accumulation import *  # noqa: F401,F403  (Lecture 28)
