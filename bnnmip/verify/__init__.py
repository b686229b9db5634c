"""The exact engine: :func:`verify` decides whether any input in an L∞ box changes the prediction.

Routes (:mod:`.enumerate`, :mod:`.branch`, :mod:`.decision`, and the paper's MILP) are combined per
instance by :mod:`.engine`; every 'robust' is a complete proof and every 'adversarial' input is
re-checked by onnxruntime on the original graph.
"""

from .engine import ENUM_BITS, ROUTES, exact_attack, verify

__all__ = ["ENUM_BITS", "ROUTES", "exact_attack", "verify"]
