"""What `nnd evaluate`, `nnd predict` and `nnd generate` do with trained weights, apart from parsing their
flags: figures on a dataset, outputs written to a file, sampled text."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from nnd.cli_train import dataset_for, load_model, weights_file
from nnd.compiler.diagnostics import NndError, counted
from nnd.compiler.output_checks import final_activation
from nnd.runtime.data_source import VOCABULARY_FILE, load_prediction_inputs, no_data_error
from nnd.runtime.progress import format_logs


def run_evaluation(file, model_name, weights, data, data_dir, limit, batch_size, backend, cuda_graphs=None,
                   confusion=False) -> None:
    model = load_model(file, model_name, backend, cuda_graphs=cuda_graphs)
    weights_path = weights_file(weights)
    model.load_weights(weights_path)
    source = data or model.spec.data
    _check_evaluable(model, source)
    dataset = dataset_for(model, source, data_dir, None, weights_path.parent)
    x, y = (dataset.x_test, dataset.y_test) if dataset.x_test is not None else (dataset.x_train, dataset.y_train)
    if y is None:
        raise NndError(f"--data {source}: no targets to evaluate against")
    ending = _classifier_ending(model) if confusion else None
    if limit is not None:
        x, y = x[:limit], y[:limit]
    logs = model.evaluate(x, y, batch_size=batch_size)
    for note in dataset.notes:
        click.echo(f"note: {note}")
    click.echo(f"{model.name} on {source} ({len(x):,} samples): {format_logs(logs)}")
    if ending is not None:
        click.echo(_confusion_table(model, ending, x, y, batch_size))


def _check_evaluable(model, source: str | None) -> None:
    """What `dataset_for` would refuse in words of training, refused in words of evaluation."""
    if len(model.input_names) != 1 or len(model.output_names) != 1:
        raise NndError(f"model '{model.name}' has {counted(len(model.input_names), 'input')} and "
                       f"{counted(len(model.output_names), 'output')}; the command line evaluates one-input, "
                       "one-output models: use the Python API with dicts of arrays (model.evaluate({...}, {...}))")
    if source is None:
        raise no_data_error("evaluation", tuple(model.graph.inputs[0].type.shape[1:]))


def _classifier_ending(model) -> str:
    """The softmax or sigmoid the model's output ends in; an error for any other model."""
    name, output = next(iter(model.graph.outputs.items()))
    ending = _classifier_outputs(model).get(name)
    single_choice = ending == "softmax" or output.type.shape[-1] == 1  # not several independent labels
    if ending is None or output.type.rank != 2 or not single_choice:
        raise NndError(f"--confusion needs a classifier: output '{name}' ({output.type}) of model '{model.name}' "
                       "does not end in a softmax, or a sigmoid of one unit, over a batch of samples")
    return ending


def _confusion_table(model, ending: str, x: np.ndarray, y: np.ndarray, batch_size: int) -> str:
    """Rows: the true classes; columns: the predicted ones; then each class's recall."""
    from nnd.runtime.metrics import confusion_matrix

    probabilities = model.predict(x, batch_size=batch_size)
    y = np.asarray(y)
    if ending == "sigmoid":
        classes, predicted, labels = 2, (probabilities[:, 0] > 0.5).astype(int), (y.reshape(len(y)) > 0.5)
    else:
        classes = probabilities.shape[1]
        predicted = probabilities.argmax(axis=1)
        labels = y.argmax(axis=1) if y.ndim == 2 and y.shape[1] == classes else y.reshape(len(y))
    counts = confusion_matrix(labels.astype(np.int64), predicted, classes)
    width = max(6, len(f"{counts.max():,}") + 1)
    lines = ["true \\ predicted" + "".join(f"{k:>{width}}" for k in range(classes)) + "   recall"]
    for k, row in enumerate(counts):
        recall = row[k] / row.sum() if row.sum() else float("nan")
        lines.append(f"{k:>17}" + "".join(f"{v:>{width},}" for v in row) + f"   {recall:.3f}")
    return "\n".join(lines)


def run_prediction(file, model_name, weights, input_path, output_path, batch_size, backend,
                   cuda_graphs=None) -> None:
    model = load_model(file, model_name, backend, cuda_graphs=cuda_graphs)
    _check_output(output_path, model.output_names)
    weights_path = weights_file(weights)
    model.load_weights(weights_path)
    if len(model.input_names) != 1:
        raise NndError(f"model '{model.name}' has {counted(len(model.input_names), 'input')}; the command line "
                       "feeds one: use the Python API with a dict of arrays (model.predict({...}))")
    inputs = load_prediction_inputs(Path(input_path), model.spec, model.graph.inputs[0].type, weights_path.parent)
    predicted = model.predict(inputs.x, batch_size=batch_size)
    if not isinstance(predicted, dict):
        predicted = {model.output_names[0]: predicted}
    outputs = {name: inputs.to_units(values) for name, values in predicted.items()}
    _write_outputs(output_path, outputs, _classifier_outputs(model))
    for note in inputs.notes:
        click.echo(f"note: {note}")
    report = f"wrote {output_path}: {len(inputs.x):,} {inputs.noun}"
    if inputs.forecasts and len(outputs) == 1:
        last = next(iter(outputs.values()))[-1]
        report += f"; the last, past the end of {Path(input_path).name}: {_numbers(last)}"
    click.echo(report)


def _numbers(values: np.ndarray) -> str:
    return ", ".join(f"{float(v):.6g}" for v in np.ravel(values))


def _check_output(path: str, output_names: list[str]) -> None:
    """Refuse an --output the outputs cannot be written to before any work is done."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".npy", ".npz", ".csv"):
        raise NndError(f"--output {path}: write a .npy, .npz or .csv file")
    if len(output_names) > 1 and suffix != ".npz":
        raise NndError(f"--output {path}: the model has {len(output_names)} outputs ({', '.join(output_names)}); "
                       "write a .npz")


def _classifier_outputs(model) -> dict[str, str]:
    """Output name -> its final softmax or sigmoid, for the outputs that give class probabilities."""
    params = set(model.graph.params.values())
    endings = {name: final_activation(value, params) for name, value in model.graph.outputs.items()}
    return {name: ending for name, ending in endings.items() if ending in ("softmax", "sigmoid")}


def _write_outputs(path: str, outputs: dict[str, np.ndarray], classifiers: dict[str, str]) -> None:
    """.npy for one output, .npz for any number (one array per output name), .csv for one output of at
    most two dimensions (a column per output unit, after the predicted class for a classifier)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        _atomic_save(path, lambda f: np.savez(f, **outputs))
    elif suffix == ".csv":
        name, values = next(iter(outputs.items()))
        text = _csv_text(name, values, classifiers.get(name))
        _atomic_save(path, lambda f: f.write(text.encode()))
    else:
        _atomic_save(path, lambda f: np.save(f, next(iter(outputs.values()))))


def _csv_text(name: str, values: np.ndarray, classifier: str | None) -> str:
    if values.ndim > 2:
        raise NndError(f"--output: output '{name}' has shape {values.shape}; a CSV holds one row per sample "
                       "of at most one axis of values: write a .npy or .npz")
    rows = values.reshape(len(values), -1)
    header = [name] if rows.shape[1] == 1 else [f"{name}_{k}" for k in range(rows.shape[1])]
    cells = [[f"{float(v):.9g}" for v in row] for row in rows]
    if (classifier == "softmax" and rows.shape[1] > 1) or (classifier == "sigmoid" and rows.shape[1] == 1):
        classes = rows.argmax(axis=1) if rows.shape[1] > 1 else (rows[:, 0] > 0.5).astype(int)
        header = ["class", *header]
        cells = [[str(int(c)), *row] for c, row in zip(classes, cells)]
    return "\n".join([",".join(header)] + [",".join(row) for row in cells]) + "\n"


def run_generation(file, model_name, weights, vocab, prompt, length, temperature, seed) -> str:
    """Continue `prompt` one sampled character at a time, feeding the model its last window."""
    from nnd.runtime.sequence_data import CharVocabulary

    model = load_model(file, model_name, "numpy")
    weights_path = weights_file(weights)
    model.load_weights(weights_path)
    vocab_path = Path(vocab) if vocab else weights_path.parent / VOCABULARY_FILE
    if not vocab_path.is_file():
        raise NndError(f"no vocabulary at {vocab_path}: give --vocab, or --weights a run directory of "
                       "`nnd train` on a text")
    vocabulary = CharVocabulary.load(vocab_path)
    input_type = model.graph.inputs[0].type
    output_type = next(iter(model.graph.outputs.values())).type
    if input_type.rank != 2 or input_type.dtype not in ("i32", "i64") or output_type.rank != 2:
        raise NndError(f"model '{model.name}' is no character model: generate needs an input of character ids "
                       f"(batch, steps) and a next-character output (batch, classes)")
    classes = int(output_type.shape[-1])
    if vocabulary.size > classes:
        raise NndError(f"{vocab_path} has {vocabulary.size} ids but model '{model.name}' predicts {classes} "
                       "classes: it was not trained with this vocabulary")
    steps = int(input_type.shape[1])
    ids = list(_prompt_ids(prompt, vocabulary, vocab_path))
    rng = np.random.default_rng(seed)
    for _ in range(length):
        window = ([0] * steps + ids)[-steps:]  # id 0 pads a prompt shorter than the window
        probabilities = model.predict(np.asarray([window], dtype=np.int64))[0].astype(np.float64)
        # The output layer may be wider than the vocabulary; the ids past its end are no characters.
        ids.append(_sample(probabilities[:vocabulary.size], temperature, rng))
    return vocabulary.decode(np.asarray(ids))


def _prompt_ids(prompt: str, vocabulary, vocab_path: Path) -> np.ndarray:
    """The prompt's ids; a character the vocabulary lacks is refused, as id 0 would silently drop it."""
    unknown = vocabulary.missing(prompt)
    if unknown:
        raise NndError(f"--prompt: the vocabulary {vocab_path} lacks {', '.join(map(repr, unknown))} "
                       f"(it has {counted(len(vocabulary.chars), 'character')})")
    return vocabulary.encode(prompt)


def _sample(probabilities: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    logits = np.log(np.maximum(probabilities, 1e-12)) / temperature
    logits[0] = -np.inf  # the padding id is never a character
    weights = np.exp(logits - logits.max())
    return int(rng.choice(len(weights), p=weights / weights.sum()))


def _atomic_save(path: str, write) -> None:
    target = Path(path)
    temporary = target.with_name(target.name + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
        temporary.replace(target)
    except OSError as err:
        raise NndError(f"cannot write --output {path}: {err.strerror}") from None


__all__ = ["run_evaluation", "run_prediction", "run_generation"]
