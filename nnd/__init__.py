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

from nnd.compiler.diagnostics import NndError, NndWarning

__version__ = "0.1.0"


def load(path: str | Path, model: str | None = None, *, weights: str | Path | None = None,
         backend: str = "numpy", dtype: str = "float32", seed: int | None = None, opt_level: int = 2,
         mixed_precision: bool | str = False, tf32: bool = False, cuda_graphs: bool = False) -> "Model":
    """Compile a `.nnd` file (or a directory written by `Model.save` / `nnd train --out`) into a Model.

    `mixed_precision=True` (or "float16") trains and predicts in float16 on float32 weights, with dynamic
    loss scaling, `mixed_precision="bfloat16"` in bfloat16 (needs ml_dtypes; no scaling);
    `tf32=True` (cupy) lets float32 GEMMs run on Tensor Cores in TF32; `cuda_graphs=True` (cupy) replays
    each training, evaluation and prediction step as one captured CUDA graph."""
    from nnd.compiler.frontend import compile_file

    path = Path(path)
    if path.is_dir():
        source, weights, saved = _saved_model(path, weights)
        path = source
        model = saved if model is None else model  # the model that was saved, not the file's last one
    result = Model(compile_file(path), model, backend=backend, dtype=dtype, seed=seed, opt_level=opt_level,
                   mixed_precision=mixed_precision, tf32=tf32, cuda_graphs=cuda_graphs)
    if weights is not None:
        result.load_weights(weights)
    return result


def loads(text: str, model: str | None = None, *, name: str = "<string>", base_dir: str | Path | None = None,
          backend: str = "numpy", dtype: str = "float32", seed: int | None = None, opt_level: int = 2,
          mixed_precision: bool | str = False, tf32: bool = False, cuda_graphs: bool = False) -> "Model":
    """Compile `.nnd` source text into a Model; imports resolve against `base_dir` (default: cwd)."""
    from nnd.compiler.frontend import compile_text

    return Model(compile_text(text, name=name, base_dir=base_dir), model, backend=backend, dtype=dtype,
                 seed=seed, opt_level=opt_level, mixed_precision=mixed_precision, tf32=tf32,
                 cuda_graphs=cuda_graphs)


def _saved_model(directory: Path, weights: str | Path | None) -> tuple[Path, Path | None, str | None]:
    import json

    manifest = directory / "model.json"
    if not manifest.is_file():
        raise NndError(f"{directory} holds no saved model (model.json is missing)")
    info = json.loads(manifest.read_text())
    source = directory / "source" / info["source"]
    if weights is None and (directory / "weights.npz").is_file():
        weights = directory / "weights.npz"
    return source, weights, info.get("model")


from nnd.model import Model  # noqa: E402  (after the functions, which are the facade's entry points)

__all__ = ["Model", "NndError", "NndWarning", "load", "loads", "__version__"]
