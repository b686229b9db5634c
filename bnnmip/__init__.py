"""bnnmip: attack and verify binarized neural networks with integer programming.

Load a BNN from ONNX with :func:`load_onnx`; its exact forward pass is checked against
onnxruntime by :func:`check_onnx`; :func:`interval_bounds` gives the big-M constants.
:func:`attack` attacks one input (``method`` one of :data:`METHODS`; 'milp' is exact and can prove
robustness), :func:`minimal_eps` finds the smallest grid radius that changes the prediction, and
:func:`attack_milp` gives the attack MILP itself as a :class:`MilpModel` (solve it, hand it to
HiGHS / SCIP / CVXPY, or write it as MPS / LP).
"""

from . import backends  # registers the solver backends with bnnmip.milp
from .attacks import METHODS, AttackResult, attack
from .attacks.minimal_eps import MinimalEpsResult, minimal_eps
from .bounds import LayerBounds, interval_bounds
from .box import DEFAULT_LEVELS, InputBox, Radius, grid_radius, input_box
from .errors import (
    BnnmipError,
    DatasetNotFoundError,
    ExactnessError,
    InvalidArgumentError,
    ModelFileError,
    SolverError,
    UnsupportedModelError,
)
from .io import datasets
from .io.onnx_reader import load_onnx
from .io.runtime import OnnxCheck, check_onnx, onnx_logits
from .milp.backend import Capabilities
from .milp.formulation import AttackModel, attack_milp
from .milp.model import MilpModel
from .milp.solution import MilpSolution
from .network import BNN, InputBinarization, Layer
from .status import SearchStatus, SolveStatus, Verdict
from .verify import verify
from .version import __version__

__all__ = [
    "__version__",
    "DEFAULT_LEVELS",
    "METHODS",
    "AttackModel",
    "AttackResult",
    "BNN",
    "Capabilities",
    "InputBox",
    "Radius",
    "SearchStatus",
    "SolveStatus",
    "Verdict",
    "backends",
    "grid_radius",
    "input_box",
    "BnnmipError",
    "DatasetNotFoundError",
    "ExactnessError",
    "InputBinarization",
    "InvalidArgumentError",
    "Layer",
    "LayerBounds",
    "MilpModel",
    "MilpSolution",
    "MinimalEpsResult",
    "ModelFileError",
    "OnnxCheck",
    "SolverError",
    "UnsupportedModelError",
    "attack",
    "attack_milp",
    "check_onnx",
    "datasets",
    "interval_bounds",
    "verify",
    "load_onnx",
    "minimal_eps",
    "onnx_logits",
]
