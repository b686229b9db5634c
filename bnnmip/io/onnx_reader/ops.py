"""Names the reader matches in ONNX graphs: op types and element types, spelled once here."""

from __future__ import annotations

from enum import Enum

import numpy as np
from onnx import TensorProto


class Op(str, Enum):
    """ONNX op types the reader consumes on the layer chain or folds on constants.

    A ``str`` enum: a member equals (and hashes like) the ``node.op_type`` it names, so
    ``node.op_type == Op.SIGN`` and ``table.get(node.op_type)`` work on plain strings.
    """

    ABS = "Abs"
    ADD = "Add"
    BATCH_NORM = "BatchNormalization"
    CAST = "Cast"
    CONSTANT = "Constant"
    DIV = "Div"
    DROPOUT = "Dropout"
    EQUAL = "Equal"
    FLATTEN = "Flatten"
    GEMM = "Gemm"
    GREATER = "Greater"
    GREATER_OR_EQUAL = "GreaterOrEqual"
    IDENTITY = "Identity"
    LESS = "Less"
    LESS_OR_EQUAL = "LessOrEqual"
    LOG_SOFTMAX = "LogSoftmax"
    MATMUL = "MatMul"
    MUL = "Mul"
    NEG = "Neg"
    NOT = "Not"
    POW = "Pow"
    RECIPROCAL = "Reciprocal"
    RESHAPE = "Reshape"
    SIGN = "Sign"
    SOFTMAX = "Softmax"
    SQRT = "Sqrt"
    SQUEEZE = "Squeeze"
    SUB = "Sub"
    TRANSPOSE = "Transpose"
    UNSQUEEZE = "Unsqueeze"
    WHERE = "Where"

    def __str__(self) -> str:
        return self.value


#: Element types of the graph input (and of a ``Cast`` on the chain) the reader accepts.
FLOAT_TYPES: dict[int, type] = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}
