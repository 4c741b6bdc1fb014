"""Tensor types: a shape whose dimensions are ints or symbols (the batch `N`), and a dtype."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

Dim = Union[int, str]

DTYPES = ("f32", "f64", "i32", "i64", "bool")
FLOAT_DTYPES = ("f32", "f64")
DTYPE_NAMES = {  # spellings accepted in source -> IR dtype
    "float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "bool",
    "f32": "f32", "f64": "f64", "i32": "i32", "i64": "i64",
}
NUMPY_DTYPES = {"f32": "float32", "f64": "float64", "i32": "int32", "i64": "int64", "bool": "bool"}

BATCH = "N"


@dataclass(frozen=True)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: str = "f32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    def with_shape(self, shape) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype: str) -> "TensorType":
        return TensorType(self.shape, dtype)

    def concrete_size(self) -> int:
        """Elements per sample: the product of the integer dimensions, symbols counted as 1."""
        size = 1
        for dim in self.shape:
            if isinstance(dim, int):
                size *= dim
        return size

    def resolve(self, bindings: dict[str, int]) -> tuple[int, ...]:
        return tuple(bindings[d] if isinstance(d, str) else d for d in self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


def format_shape(shape: tuple[Dim, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class ShapeError(Exception):
    """Raised by an op's shape rule; the caller attaches the source position."""


def broadcast_shapes(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """NumPy broadcasting over symbolic dimensions: a symbol matches itself or 1."""
    result: list[Dim] = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        if da == db or db == 1:
            result.append(da)
        elif da == 1:
            result.append(db)
        else:
            raise ShapeError(f"shapes {format_shape(a)} and {format_shape(b)} do not broadcast")
    return tuple(reversed(result))
