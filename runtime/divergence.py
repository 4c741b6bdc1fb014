"""The message for a training loss that is no longer finite, with the advice that fits what is known.

At the first step no update has happened yet, so the learning rate cannot be the cause: the loss itself
failed on the initial weights, most often a probability loss on raw scores (the compiler's warning says
which), else extreme values in the data, or half precision overflowing. Later, a diverging run usually
means a learning rate too high, and the loss warnings still apply.
"""
from __future__ import annotations

import numpy as np

from nnd.compiler.ir import Graph
from nnd.compiler.output_checks import loss_warnings
from nnd.compiler.training import TrainSpec


def divergence_message(loss: float, step: int, spec: TrainSpec, graph: Graph, compute: np.dtype) -> str:
    """Why the loss became `loss` (nan or inf) at optimizer step `step` (counted from 1)."""
    warned = [f"{w.message} ({w.notes[-1]})" if w.notes else w.message for w in loss_warnings(spec, graph)]
    half = f"; in {compute.name}, values may overflow: try without mixed precision" if compute.itemsize == 2 else ""
    if step == 1:
        cause = f"most likely: {'; '.join(warned)}" if warned else "check the inputs and targets for extreme values"
        return f"the loss became {loss} at step 1, before any update, so not through the learning rate; {cause}{half}"
    also = f"; also, {'; '.join(warned)}" if warned else ""
    return (f"the loss became {loss} at step {step}; lower the learning rate (--lr, or lr= in compile()) or check "
            f"the data for extreme values{half}{also}")
