"""What `nnd train` does, apart from parsing its flags, and the helpers the other commands share with it."""
from __future__ import annotations

import time
import warnings as warnings_module
from dataclasses import dataclass, replace
from pathlib import Path

import click
import numpy as np

from nnd.arguments import validation_count
from nnd.compiler.diagnostics import Diagnostic, NndError, NndWarning, counted
from nnd.compiler.training import Configured, TrainSpec
from nnd.runtime.data_source import Dataset, load_dataset
from nnd.runtime.datasets import shape_hint
from nnd.runtime.progress import format_logs


def load_model(file: str, model_name: str | None, backend: str, seed: int | None = None, level: int = 2,
           mixed_precision: str | None = None, tf32: bool = False, cuda_graphs: bool | None = None):
    import nnd

    if cuda_graphs and backend != "cupy":
        raise click.BadParameter("CUDA graphs replay GPU work: add --backend cupy", param_hint="--cuda-graphs")
    return nnd.load(file, model_name, backend=backend, seed=seed, opt_level=level, mixed_precision=mixed_precision,
                    tf32=tf32, cuda_graphs=cuda_graphs)


def weights_file(weights: str) -> Path:
    path = Path(weights)
    if path.is_dir():
        if not (path / "weights.npz").is_file():
            raise NndError(f"--weights {weights}: the directory holds no weights.npz (a run directory gets one "
                           "when training finishes)")
        path = path / "weights.npz"
    if not path.is_file():
        raise NndError(f"--weights {weights}: no such file")
    return path


def dataset_for(model, source: str | None, data_dir: str | None, limit: int | None,
             run_dir: Path | None = None) -> Dataset:
    """The data for a model with one input and one output, shaped for them (see runtime.data_source);
    `run_dir` holds what a training run saved to prepare its data (statistics, vocabulary)."""
    if len(model.input_names) != 1 or len(model.output_names) != 1:
        raise NndError(f"model '{model.name}' has {counted(len(model.input_names), 'input')} and "
                       f"{counted(len(model.output_names), 'output')}; the command line trains one-input, "
                       "one-output models: use the Python API with dicts of arrays (nnd.load(...).fit({...}, {...}))")
    output = next(iter(model.graph.outputs.values()))
    base_dir = Path(model.program.program.root.file).resolve().parent
    value = model.graph.inputs[0]
    dataset = load_dataset(source, data_dir, model.spec, value.type, output.type, base_dir, run_dir, value.name)
    _check_sample_shape(model, source, dataset.x_train)
    if limit is not None:
        dataset.x_train = dataset.x_train[:limit]
        dataset.y_train = None if dataset.y_train is None else dataset.y_train[:limit]
    _check_targets(model, source, dataset)
    return dataset


def _check_targets(model, source: str | None, dataset: Dataset) -> None:
    """Targets that do not fit the model, named by their key in the data file (y_train), not as fit's y."""
    for role in ("y_train", "y_test"):
        y, key = getattr(dataset, role), dataset.keys.get(role)
        if y is None or key is None:
            continue
        try:
            model._target(model.output_names[0], y, key)
        except NndError as err:
            raise NndError([replace(d, message=f"--data {source}: {d.message}") for d in err.diagnostics],
                           err.sources) from None


def _check_sample_shape(model, source: str | None, x: np.ndarray) -> None:
    """Data made for another model is named as such, before any array check deeper down."""
    value = model.graph.inputs[0]
    dims = tuple(value.type.shape[1:])
    shape = tuple(x.shape[1:])
    if len(shape) != len(dims) or any(isinstance(d, int) and d != s for d, s in zip(dims, shape)):
        raise NndError(f"--data {source} holds {len(x):,} samples of shape {shape}, but input '{value.name}' of "
                       f"model '{model.name}' takes {dims}" + shape_hint(tuple(x.shape), dims))


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
    cuda_graphs: bool | None = None  # None: on with the cupy backend


def run_training(file: str, options: TrainOptions) -> None:
    from nnd.runtime.run_directory import resume as resume_run

    model = load_model(file, options.model, options.backend, options.seed, options.level, options.mixed_precision,
                   options.tf32, options.cuda_graphs)
    spec = model.spec
    if options.lr is not None:
        spec.optimizer = Configured(spec.optimizer.name, {**spec.optimizer.args, "lr": options.lr},
                                    spec.optimizer.span)
    if options.validation_split is not None:
        spec.validation_split = options.validation_split
    if options.weights is not None:
        model.load_weights(weights_file(options.weights))
    source = options.data or spec.data
    dataset = dataset_for(model, source, options.data_dir, options.limit)
    if dataset.y_train is None:
        raise NndError(f"--data {source}: the file holds inputs but no targets (y)")
    run_dir = _run_directory(model.name, options, dataset)
    epochs = options.epochs or spec.epochs
    initial_epoch = 0
    if options.resume is not None:
        with warnings_module.catch_warnings(record=True) as said:
            warnings_module.simplefilter("always", NndWarning)
            initial_epoch = resume_run(model, model._get_trainer(), options.resume)
        for warning in said:
            click.echo(f"warning: {warning.message}", err=True)
        run_dir.resumed_from = (Path(options.resume), initial_epoch)
        trainer = model._get_trainer()
        if options.lr is not None and trainer.schedule is None:  # a schedule starts from --lr already
            trainer.optimizer.lr = options.lr  # over the checkpoint's
        if initial_epoch >= epochs:
            raise NndError(f"--resume {options.resume}: the run already did {initial_epoch} epochs; "
                           f"ask for more with --epochs")
    echo = (lambda text: None) if options.quiet else click.echo
    precision = f", mixed precision ({model.mixed_precision})" if model.mixed_precision else ""
    samples = f"{len(dataset.x_train):,} samples"
    if spec.validation_split:
        held_out = validation_count(len(dataset.x_train), spec.validation_split)
        samples += f" ({held_out:,} held out for validation)"
    echo(f"training {model.name} on {source}: {samples}, batch "
         f"{options.batch_size or spec.batch_size}, {epochs} epoch{'s' if epochs != 1 else ''}{precision}; "
         f"run directory {run_dir.path}")
    notes = list(dataset.notes)
    if options.resume is None:  # a resumed run's checkpoint holds the statistics it learned
        notes += _adapt_normalizations(model, dataset.x_train, spec.validation_split)
    for note in notes:
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


def _adapt_normalizations(model, x_train: np.ndarray, validation_split: float | None) -> list[str]:
    """Learn the statistics of the normalization layers that have none (no mean= and variance= in the
    source, none from --weights) on the samples that train, as model.adapt(x) would; the notes to print."""
    from nnd.adapt import adapt, unadapted

    layers = unadapted(model)
    if not layers:
        return []
    trained = len(x_train) - (validation_count(len(x_train), validation_split) if validation_split else 0)
    names = adapt(model, model._inputs(x_train[:trained]), layers)
    which = ", ".join(f"'{name}'" for name in names)
    return [f"normalization {which}: mean and variance per feature learned from the {trained:,} training samples "
            "(as model.adapt(x) does), before the first epoch"]


def _run_directory(model_name: str, options: TrainOptions, dataset: Dataset):
    """--out, else the directory of the checkpoint --resume continues, else a fresh runs/MODEL-TIME. A
    directory that holds another run is refused (its weights would be lost) unless the run continues there
    (--resume from it) or --overwrite says so."""
    from nnd.runtime.run_directory import RunDirectory

    out = options.out
    if out is None and options.resume is not None:
        out = str(Path(options.resume).parent)  # a resumed run goes on where it was
    if out is None:
        base = Path("runs") / f"{model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, count = base, 1
        while path.exists():  # two runs started in the same second
            count += 1
            path = base.with_name(f"{base.name}-{count}")
        return RunDirectory(path, dataset.artifacts)
    path = Path(out)
    held = RunDirectory(path).held()
    resumed_here = options.resume is not None and Path(options.resume).resolve().parent == path.resolve()
    if held and not resumed_here and not options.overwrite:
        checkpoint = path / "checkpoint.npz"
        go_on = f"continue it with --resume {checkpoint}, " if checkpoint.exists() else ""
        raise NndError(f"--out {out} already holds a run ({', '.join(held)}); {go_on}choose another --out, "
                       "or add --overwrite")
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
    model = load_model(file, model_name, "numpy", seed, level)
    if weights is not None:
        model.load_weights(weights_file(weights))
    source = data or model.spec.data
    dataset = dataset_for(model, source, data_dir, limit)
    if dataset.y_train is None:
        raise NndError(f"--data {source}: the file holds inputs but no targets (y)")
    _adapt_normalizations(model, dataset.x_train, None)  # the step nnd train would take first
    batch = min(batch_size or model.spec.batch_size, len(dataset.x_train))
    trainer = model._get_trainer()
    feeds = trainer.with_sample_weights(model._feeds(dataset.x_train[:batch], dataset.y_train[:batch]))
    graph = trainer.train_graph
    differences = compare_backends(graph, feeds, model.params, pair, model.dtype, model.seed or 0)
    title = (f"one training step of {model.name} on {batch} samples of {source} "
             f"({np.dtype(model.dtype).name}, -O{level})")
    click.echo(format_parity(differences, backends, model.dtype, title))
    return first_divergence(differences, model.dtype) is None


__all__ = ["TrainOptions", "dataset_for", "load_model", "run_parity", "run_training", "weights_file"]
