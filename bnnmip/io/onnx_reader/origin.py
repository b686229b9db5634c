"""Where a loaded BNN came from: the validated model bytes onnxruntime reruns to judge it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import onnx
from onnx import helper


@dataclass(frozen=True)
class OnnxOrigin:
    """Where a BNN came from, enough to rerun the original graph in onnxruntime."""

    path: str
    model_bytes: bytes  # the reference graph: the validated model as standard ONNX (see .reference)
    input_name: str
    input_shape: tuple[int, ...]  # without the batch dimension
    logits_name: str
    dtype: type

    @cached_property
    def logits_model(self) -> bytes:
        """The model with its logits tensor (before any Softmax) as an output."""
        model = onnx.load_model_from_string(self.model_bytes)
        if self.logits_name not in [o.name for o in model.graph.output]:
            dtype = helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))
            model.graph.output.append(helper.make_tensor_value_info(self.logits_name, dtype, None))
        return model.SerializeToString()


def any_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with a symbolic batch dimension on its input and outputs (and no stale value_info).

    The reader only accepts graphs that keep the batch dimension apart (Flatten(axis=1), Reshape
    with 0 or -1 first), so a graph exported with batch size 1 computes the same per row for any
    batch, and onnxruntime can judge many inputs in one run.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "N"
    del model.graph.value_info[:]
    return model
