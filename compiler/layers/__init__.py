"""The layer catalog: importing this package registers every layer in `LAYERS`."""
from nnd.compiler.layers import (activations, attention, conv, core, depthwise, noise,  # noqa: F401
                                 normalization, preprocessing, recurrent, sequence)
from nnd.compiler.layers.base import INFER, LAYERS, TRAIN, LayerContext, LayerError, LayerSpec

__all__ = ["INFER", "LAYERS", "TRAIN", "LayerContext", "LayerError", "LayerSpec"]
