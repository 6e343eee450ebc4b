"""Mixture of experts, built up over Lectures 18-22.

18 :mod:`utils.moe.experts` (the SwiGLU expert, dense vs sparse cost accounting),
19 :mod:`utils.moe.routing` (top-k router, sparse MoE layer with loop and batched dispatch),
20 :mod:`utils.moe.balancing` (importance and load-balancing losses, capacity and token dropping,
noisy top-k),
21 :mod:`utils.moe.deepseek` (DeepSeekMoE: fine-grained and shared experts, sigmoid gating, the
correction bias and its update, the sequence-wise loss, group-limited routing).
Every public name is re-exported here: ``utils.moe.TopKRouter``.
"""

from utils.moe.experts import *  # noqa: F401,F403  (Lecture 18)
from utils.moe.routing import *  # noqa: F401,F403  (Lecture 19)
from utils.moe.balancing import *  # noqa: F401,F403  (Lecture 20)
from utils.moe.deepseek import *  # noqa: F401,F403  (Lecture 21)
