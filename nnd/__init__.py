"""nnd: a compiler and runtime for the .nnd neural-network model language.

    import nnd
    model = nnd.load("examples/mnist_cnn.nnd")
    model.fit(x_train, y_train, epochs=1)
    probabilities = model.predict(x_test)
"""
from __future__ import annotations

import os
from pathlib import Path

# OpenBLAS (NumPy's BLAS) keeps its idle worker threads spinning for 2^28 cycles (about 0.1 s) after
# every call. nnd's native kernels run their own threads between GEMMs, and spinning workers would take
# their cores; 2^18 cycles (under 0.1 ms) still keeps back-to-back GEMMs warm. OpenBLAS reads this when
# it loads, so it applies when nnd is imported before NumPy (the CLI always is); a value set by the user
# wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")

from typing import TYPE_CHECKING

from nnd.compiler.diagnostics import NndError, NndWarning

if TYPE_CHECKING:
    from nnd.model import Model

__version__ = "0.1.0"


def load(path: str | Path, model: str | None = None, *, weights: str | Path | None = None,
         backend: str = "numpy", dtype: str | None = None, seed: int | None = None, opt_level: int = 2,
         mixed_precision: bool | str | None = None, tf32: bool = False, cuda_graphs: bool | None = None) -> "Model":
    """Compile a `.nnd` file (or a directory written by `Model.save` / `nnd train --out`) into a Model.

    A saved directory brings back its weights, dtype, precision and what `compile()` set, unless given
    here. `dtype` is float32 (default) or float64; `mixed_precision=True` (or "float16") trains and
    predicts in float16 on float32 weights, with dynamic loss scaling, `mixed_precision="bfloat16"` in
    bfloat16 (needs ml_dtypes; no scaling); `tf32=True` (cupy) lets float32 GEMMs run on Tensor Cores in
    TF32; on cupy, each training, evaluation and prediction step replays as one captured CUDA graph
    unless `cuda_graphs=False`."""
    from nnd.arguments import as_path
    from nnd.compiler.frontend import compile_file
    from nnd.runtime.saved_model import SOURCE_DIR, WEIGHTS, read_manifest, read_optimizer_state

    if not isinstance(path, (str, os.PathLike)):
        raise NndError(f"load takes the path of a .nnd file or a saved model directory, got {type(path).__name__}")
    path = as_path(path, "the model path")
    if weights is not None:
        weights = as_path(weights, "weights")
    directory = path if path.is_dir() else None
    saved: dict = {}
    if directory is not None:
        saved = read_manifest(directory)
        if weights is None:
            if not (directory / WEIGHTS).is_file():
                raise NndError(f"{directory} holds no {WEIGHTS} (a run directory gets one when its training "
                               "finishes): pass weights= (its checkpoint.npz, say), or load the .nnd file for a "
                               "fresh model")
            weights = directory / WEIGHTS
        model = saved.get("model") if model is None else model  # the model that was saved, not the file's last
        path = directory / SOURCE_DIR / saved["source"]
    from nnd.model import Model

    result = Model(compile_file(path), model, backend=backend,
                   dtype=dtype if dtype is not None else saved.get("dtype") or "float32", seed=seed,
                   opt_level=opt_level, tf32=tf32, cuda_graphs=cuda_graphs,
                   mixed_precision=mixed_precision if mixed_precision is not None
                   else saved.get("mixed_precision") or False)
    _compile_saved(result, saved.get("compile"))
    if weights is not None:
        result.load_weights(weights)
    if directory is not None:
        result.pending_optimizer_state = read_optimizer_state(directory)
    return result


def loads(text: str, model: str | None = None, *, name: str = "<string>", base_dir: str | Path | None = None,
          backend: str = "numpy", dtype: str = "float32", seed: int | None = None, opt_level: int = 2,
          mixed_precision: bool | str = False, tf32: bool = False, cuda_graphs: bool | None = None) -> "Model":
    """Compile `.nnd` source text into a Model; imports resolve against `base_dir` (default: cwd)."""
    from nnd.arguments import as_path
    from nnd.compiler.frontend import compile_text
    from nnd.model import Model

    if not isinstance(text, str):
        raise NndError(f"loads takes the model's source as a str, got {type(text).__name__}"
                       + (" (decode bytes first: text.decode('utf-8'))" if isinstance(text, bytes) else ""))
    if not isinstance(name, str):
        raise NndError(f"loads' name (the file name its messages give) must be a str, got {type(name).__name__}")
    if base_dir is not None:
        base_dir = as_path(base_dir, "base_dir")
    return Model(compile_text(text, name=name, base_dir=base_dir), model, backend=backend, dtype=dtype,
                 seed=seed, opt_level=opt_level, mixed_precision=mixed_precision, tf32=tf32,
                 cuda_graphs=cuda_graphs)


def _compile_saved(model: "Model", choices: dict | None) -> None:
    """Apply the optimizer, loss (one, or one per output), loss weights and metrics a saved model's
    compile() had set."""
    if not choices:
        return
    from nnd.compiler.training import Configured

    def configured(entry: dict) -> Configured:
        return Configured(entry["name"], dict(entry.get("args", {})))

    def loss(entry: dict) -> Configured | dict[str, Configured]:
        if "outputs" in entry:
            return {name: configured(each) for name, each in entry["outputs"].items()}
        return configured(entry)

    try:
        model.compile(optimizer=configured(choices["optimizer"]) if "optimizer" in choices else None,
                      loss=loss(choices["loss"]) if "loss" in choices else None,
                      metrics=[configured(m) for m in choices["metrics"]] if "metrics" in choices else None,
                      loss_weights=dict(choices["loss_weights"]) if "loss_weights" in choices else None)
    except (KeyError, TypeError, AttributeError):
        raise NndError(f"the saved model's \"compile\" entry is malformed: {choices!r}") from None


# The classes load on first use, so that `import nnd` (and the command line's start, which a Ctrl-C may
# interrupt) does not wait for the compiler and runtime (the better part of a second).
_LAZY = {"Model": "nnd.model", "Callback": "nnd.runtime.callbacks", "EarlyStopping": "nnd.runtime.callbacks",
         "ReduceLROnPlateau": "nnd.runtime.callbacks", "Configured": "nnd.compiler.training"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nnd' has no attribute {name!r}")


__all__ = ["Callback", "Configured", "EarlyStopping", "Model", "NndError", "NndWarning", "ReduceLROnPlateau", "load",
           "loads", "__version__"]
