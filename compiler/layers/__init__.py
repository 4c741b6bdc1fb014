"""The layer catalog: importing this package registers every layer in `LAYERS`."""
from nnd.compiler.layers import activations, conv, core, recurrent, sequence  # noqa: F401  (registration)
from nnd.compiler.layers.base import INFER, LAYERS, TRAIN, LayerContext, LayerError, LayerSpec

__all__ = ["INFER", "LAYERS", "TRAIN", "LayerContext", "LayerError", "LayerSpec"]
