"""What a Keras user writes that the language says another way, for the notes of the errors it causes.

Nothing here is accepted as a spelling of the language: these tables only make the messages point at
the right thing (a misread suggestion such as `layer_normalization` -> `batch_normalization` would be
worse than none).
"""
from __future__ import annotations

from nnd.compiler.diagnostics import snake_case

# Keras layers with no counterpart in the catalog (by Keras' snake-case names); the closest catalog name
# is another layer altogether, so no "did you mean" is offered for them.
MISSING_LAYERS = frozenset((
    "lambda", "conv3d",
    "text_vectorization", "string_lookup", "integer_lookup",
    "category_encoding", "hashing", "conv_lstm2d",
    "activity_regularization",
))

# Keras layer arguments that give the shape of the data; here the `input` line does.
_SHAPE_ARGUMENTS = ("input_shape", "batch_input_shape", "input_length", "batch_size", "input_dim")


def is_missing_layer(name: str) -> bool:
    """Whether `name` (as written, in Keras' class spelling or snake case) is a Keras layer nnd lacks."""
    return snake_case(name) in MISSING_LAYERS or name in MISSING_LAYERS


def shape_argument_note(argument: str) -> str | None:
    """The note for a Keras shape argument given to a layer that has no such argument."""
    if argument not in _SHAPE_ARGUMENTS:
        return None
    if argument == "input_length":
        return "a sequence's length comes from its input line, e.g. input tokens: int32[200]"
    return "shapes come from the model's input lines, e.g. input image: [28, 28, 1] (the batch axis is implicit)"
