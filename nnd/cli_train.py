"""What `nnd train`, `nnd evaluate` and `nnd predict` do, apart from parsing their flags."""
from __future__ import annotations

import math
import time
import warnings as warnings_module
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from nnd.compiler.diagnostics import Diagnostic, NndError, NndWarning
from nnd.compiler.output_checks import final_activation
from nnd.compiler.training import Configured, TrainSpec
from nnd.runtime.data_source import VOCABULARY_FILE, Dataset, load_dataset, load_prediction_inputs
from nnd.runtime.progress import format_logs


def _model(file: str, model_name: str | None, backend: str, seed: int | None = None, level: int = 2,
           mixed_precision: str | None = None, tf32: bool = False, cuda_graphs: bool = False):
    import nnd

    if cuda_graphs and backend != "cupy":
        raise click.BadParameter("CUDA graphs replay GPU work: add --backend cupy", param_hint="--cuda-graphs")
    return nnd.load(file, model_name, backend=backend, seed=seed, opt_level=level, mixed_precision=mixed_precision,
                    tf32=tf32, cuda_graphs=cuda_graphs)


def _weights_path(weights: str) -> Path:
    path = Path(weights)
    if path.is_dir():
        path = path / "weights.npz"
    if not path.is_file():
        raise NndError(f"--weights {weights}: no such file")
    return path


def _dataset(model, source: str | None, data_dir: str | None, limit: int | None,
             run_dir: Path | None = None) -> Dataset:
    """The data for a model with one input and one output, shaped for them (see runtime.data_source);
    `run_dir` holds what a training run saved to prepare its data (statistics, vocabulary)."""
    if len(model.input_names) != 1 or len(model.output_names) != 1:
        raise NndError(f"model '{model.name}' has {len(model.input_names)} inputs and {len(model.output_names)} "
                       "outputs; the command line trains one-input, one-output models: use the Python API "
                       "with dicts of arrays (nnd.load(...).fit({...}, {...}))")
    output = next(iter(model.graph.outputs.values()))
    base_dir = Path(model.program.program.root.file).resolve().parent
    dataset = load_dataset(source, data_dir, model.spec, model.graph.inputs[0].type, output.type, base_dir,
                           run_dir)
    _check_sample_shape(model, source, dataset.x_train)
    if limit is not None:
        dataset.x_train = dataset.x_train[:limit]
        dataset.y_train = None if dataset.y_train is None else dataset.y_train[:limit]
    return dataset


def _check_sample_shape(model, source: str | None, x: np.ndarray) -> None:
    """Data made for another model is named as such, before any array check deeper down."""
    value = model.graph.inputs[0]
    dims = tuple(value.type.shape[1:])
    shape = tuple(x.shape[1:])
    if len(shape) != len(dims) or any(isinstance(d, int) and d != s for d, s in zip(dims, shape)):
        raise NndError(f"--data {source} holds {len(x):,} samples of shape {shape}, but input '{value.name}' of "
                       f"model '{model.name}' takes {dims}")


@dataclass
class TrainOptions:
    """The flags of `nnd train` (None: the train section decides)."""

    model: str | None = None
    data: str | None = None
    data_dir: str | None = None
    limit: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    validation_split: float | None = None
    seed: int | None = None
    backend: str = "numpy"
    level: int = 2
    out: str | None = None
    resume: str | None = None
    weights: str | None = None
    overwrite: bool = False
    quiet: bool = False
    mixed_precision: str | None = None
    tf32: bool = False
    cuda_graphs: bool = False


def run_training(file: str, options: TrainOptions) -> None:
    from nnd.runtime.fit import resume as resume_run

    model = _model(file, options.model, options.backend, options.seed, options.level, options.mixed_precision,
                   options.tf32, options.cuda_graphs)
    spec = model.spec
    if options.lr is not None:
        spec.optimizer = Configured(spec.optimizer.name, {**spec.optimizer.args, "lr": options.lr},
                                    spec.optimizer.span)
    if options.validation_split is not None:
        spec.validation_split = options.validation_split
    if options.weights is not None:
        model.load_weights(_weights_path(options.weights))
    source = options.data or spec.data
    dataset = _dataset(model, source, options.data_dir, options.limit)
    if dataset.y_train is None:
        raise NndError(f"--data {source}: the file holds inputs but no targets (y)")
    run_dir = _run_directory(model.name, options, dataset)
    epochs = options.epochs or spec.epochs
    initial_epoch = 0
    if options.resume is not None:
        initial_epoch = resume_run(model, model._get_trainer(), options.resume)
        if initial_epoch >= epochs:
            raise NndError(f"--resume {options.resume}: the run already did {initial_epoch} epochs; "
                           f"ask for more with --epochs")
    echo = (lambda text: None) if options.quiet else click.echo
    precision = f", mixed precision ({model.mixed_precision})" if model.mixed_precision else ""
    samples = f"{len(dataset.x_train):,} samples"
    if spec.validation_split:
        samples += f" ({math.floor(len(dataset.x_train) * spec.validation_split):,} held out for validation)"
    echo(f"training {model.name} on {source}: {samples}, batch "
         f"{options.batch_size or spec.batch_size}, {epochs} epoch{'s' if epochs != 1 else ''}{precision}; "
         f"run directory {run_dir.path}")
    for note in dataset.notes:
        echo(f"note: {note}")
    validation = None
    warnings = list(model.program.warnings.get(model.name, []))
    if not spec.validation_split and dataset.x_test is not None:
        validation = (dataset.x_test, dataset.y_test)
        warnings += _test_split_selection_warnings(spec)
    for warning in warnings:
        click.echo(warning.render(model.program.sources), err=True)
    with warnings_module.catch_warnings():  # said above, in the command line's format
        warnings_module.simplefilter("ignore", NndWarning)
        model.fit(dataset.x_train, dataset.y_train, epochs, options.batch_size, validation_data=validation,
                  verbose=0 if options.quiet else 1, initial_epoch=initial_epoch, run_dir=run_dir)
    if dataset.x_test is not None and dataset.y_test is not None:
        logs = model.evaluate(dataset.x_test, dataset.y_test)
        echo(f"test: {format_logs(logs)}")
    echo(f"saved {run_dir.path / 'weights.npz'}")


def _run_directory(model_name: str, options: TrainOptions, dataset: Dataset):
    """--out, or a fresh runs/MODEL-TIME. A directory that holds another run is refused (its weights
    would be lost) unless the run continues there (--resume from it) or --overwrite says so."""
    from nnd.runtime.fit import RUN_FILES, RunDirectory

    if options.out is None:
        base = Path("runs") / f"{model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, count = base, 1
        while path.exists():  # two runs started in the same second
            count += 1
            path = base.with_name(f"{base.name}-{count}")
        return RunDirectory(path, dataset.artifacts)
    path = Path(options.out)
    held = [name for name in RUN_FILES if name.endswith(".npz") and (path / name).exists()]
    resumed_here = options.resume is not None and Path(options.resume).resolve().parent == path.resolve()
    if held and not resumed_here and not options.overwrite:
        raise NndError(f"--out {options.out} already holds a run ({', '.join(held)}); continue it with --resume "
                       f"{path / 'checkpoint.npz'}, choose another --out, or add --overwrite")
    return RunDirectory(path, dataset.artifacts, replace=bool(held) and not resumed_here)


def _test_split_selection_warnings(spec: TrainSpec) -> list[Diagnostic]:
    """Without a validation split, `nnd train` reports the test split as val_*; a callback that monitors
    one of those figures then picks the model on the test data, and the test figures come out optimistic."""
    warnings = []
    for callback in spec.callbacks:
        monitor = str(callback.args.get("monitor", "val_loss"))
        if monitor.startswith("val_"):
            warnings.append(Diagnostic(
                f"{callback.name} monitors {monitor}, which is measured on the test split because the recipe "
                "has no validation_split", callback.span,
                ("set validation_split (e.g. 0.1, or --validation-split 0.1) to keep the test split out of model "
                 "selection",),
                severity="warning"))
    return warnings


def run_parity(file, model_name, data, data_dir, limit, batch_size, seed, level, weights,
               backends: tuple[str, str]) -> bool:
    """One training step (forward and backward, no update) on the first batch, on both backends; prints
    every op's difference and returns whether they agree."""
    from nnd.runtime.backend import get_backend
    from nnd.runtime.parity import compare_backends, first_divergence, format_parity

    pair = tuple(get_backend(name) for name in backends)  # a missing backend fails here, in one line
    model = _model(file, model_name, "numpy", seed, level)
    if weights is not None:
        model.load_weights(_weights_path(weights))
    source = data or model.spec.data
    dataset = _dataset(model, source, data_dir, limit)
    if dataset.y_train is None:
        raise NndError(f"--data {source}: the file holds inputs but no targets (y)")
    batch = min(batch_size or model.spec.batch_size, len(dataset.x_train))
    feeds = model._feeds(dataset.x_train[:batch], dataset.y_train[:batch])
    graph = model._get_trainer().train_graph
    differences = compare_backends(graph, feeds, model.params, pair, model.dtype, model.seed or 0)
    title = (f"one training step of {model.name} on {batch} samples of {source} "
             f"({np.dtype(model.dtype).name}, -O{level})")
    click.echo(format_parity(differences, backends, model.dtype, title))
    return first_divergence(differences, model.dtype) is None


def run_evaluation(file, model_name, weights, data, data_dir, limit, batch_size, backend, cuda_graphs=False,
                   confusion=False) -> None:
    model = _model(file, model_name, backend, cuda_graphs=cuda_graphs)
    weights_path = _weights_path(weights)
    model.load_weights(weights_path)
    source = data or model.spec.data
    dataset = _dataset(model, source, data_dir, None, weights_path.parent)
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


def _classifier_ending(model) -> str:
    """The softmax or sigmoid the model's output ends in; an error for any other model."""
    name, output = next(iter(model.graph.outputs.items()))
    ending = _classifier_outputs(model).get(name)
    if ending is None or output.type.rank != 2:
        raise NndError(f"--confusion needs a classifier: output '{name}' ({output.type}) of model '{model.name}' "
                       "does not end in a softmax or sigmoid over a batch of samples")
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
                   cuda_graphs=False) -> None:
    model = _model(file, model_name, backend, cuda_graphs=cuda_graphs)
    _check_output(output_path, model.output_names)
    weights_path = _weights_path(weights)
    model.load_weights(weights_path)
    if len(model.input_names) != 1:
        raise NndError(f"model '{model.name}' has {len(model.input_names)} inputs; the command line feeds "
                       "one: use the Python API with a dict of arrays (model.predict({...}))")
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

    model = _model(file, model_name, "numpy")
    model.load_weights(_weights_path(weights))
    vocab_path = Path(vocab) if vocab else _weights_path(weights).parent / VOCABULARY_FILE
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
    ids = list(vocabulary.encode(prompt))
    rng = np.random.default_rng(seed)
    for _ in range(length):
        window = ([0] * steps + ids)[-steps:]  # id 0 pads a prompt shorter than the window
        probabilities = model.predict(np.asarray([window], dtype=np.int64))[0].astype(np.float64)
        # The output layer may be wider than the vocabulary; the ids past its end are no characters.
        ids.append(_sample(probabilities[:vocabulary.size], temperature, rng))
    return vocabulary.decode(np.asarray(ids))


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


__all__ = ["TrainOptions", "run_training", "run_evaluation", "run_prediction"]
