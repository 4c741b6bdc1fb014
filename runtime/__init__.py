"""The nnd runtime: backends (NumPy, CuPy), the graph executor, optimizers, data and training."""
