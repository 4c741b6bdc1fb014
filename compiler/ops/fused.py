"""Ops made by the fusion passes (nnd.compiler.fusion), never by lowering.

* `conv2d_epilogue[strides, padding, dilation, activation, layout](x, w, bias)` and
  `matmul_epilogue[activation](a, b, bias)`: the product, plus the bias, through an activation (`linear`,
  `relu`, `sigmoid` or `tanh`), all written into the product's own buffer.

Fusion runs after autodiff, on forward and backward together, so these ops need no gradient rule.
"""
from __future__ import annotations

from typing import Any, Sequence

from nnd.compiler.ops.basic import _infer_matmul
from nnd.compiler.ops.conv import _infer_conv2d, conv_layout
from nnd.compiler.ops.registry import NOT_DIFFERENTIABLE, Fusion, register
from nnd.compiler.tensor_type import ShapeError, TensorType

EPILOGUE_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh")


def _with_bias(product_rule):
    def infer(attrs: dict[str, Any], types: Sequence[TensorType]) -> list[TensorType]:
        *operands, bias = types
        (out,) = product_rule({k: v for k, v in attrs.items() if k != "activation"}, operands)
        channels = out.shape[1] if conv_layout(attrs, "epilogue") == "NCHW" else out.shape[-1]
        if bias.shape != (channels,):
            raise ShapeError(f"epilogue bias must have shape ({channels},), got {bias}")
        if attrs.get("activation", "linear") not in EPILOGUE_ACTIVATIONS:
            raise ShapeError(f"epilogue activation must be one of {', '.join(EPILOGUE_ACTIVATIONS)}")
        return [out]
    return infer


register("conv2d_epilogue", infer=_with_bias(_infer_conv2d), fusion=Fusion.OUTPUT_FUSABLE,
         grad=NOT_DIFFERENTIABLE, arity=3, doc="activation(conv2d(x, w) + bias), in one buffer")
register("matmul_epilogue", infer=_with_bias(_infer_matmul), fusion=Fusion.OUTPUT_FUSABLE,
         grad=NOT_DIFFERENTIABLE, arity=3, doc="activation(a @ b + bias), in one buffer")
