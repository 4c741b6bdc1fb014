"""The `nnd` command line."""
from __future__ import annotations

import functools
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

import click

from nnd.compiler.diagnostics import NndError

BUG_REPORT = "this is a bug in nnd; please report it with the command and the model file"


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange lets nan (and, unbounded, inf) through, since no comparison fails for nan."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number", param, ctx)
        return number


SEED = click.IntRange(min=0)


def user_errors(fn: Callable) -> Callable:
    """Print NndError as diagnostics and exit 1; anything else is an internal error, reported as such."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NndError as err:
            click.echo(err.render(), err=True)
            sys.exit(1)
        except BrokenPipeError:
            # The reader went away (`nnd compile ... | head`); stay quiet like other Unix tools.
            sys.stderr = open(os.devnull, "w")
            sys.exit(0)
        except KeyboardInterrupt as interrupt:
            click.echo(str(interrupt) or "interrupted", err=True)  # training says what it saved
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except MemoryError:
            click.echo("error: out of memory; try a smaller --batch-size", err=True)
            sys.exit(1)
        except Exception as err:  # noqa: BLE001 - the last line of defence against tracebacks
            if os.environ.get("NND_DEBUG"):
                traceback.print_exc()
            click.echo(f"internal error: {type(err).__name__}: {err}\n  note: {BUG_REPORT}"
                       " (set NND_DEBUG=1 for the traceback)", err=True)
            sys.exit(2)

    return wrapper


def _layout_costs(layout: str):
    """select-layout's cost model for `nnd compile --layout`: none for NHWC (nothing moves)."""
    if layout == "NHWC":
        return None
    from nnd.compiler.layout import forced_costs
    from nnd.runtime.layout_costs import cost_model

    return forced_costs("NCHW") if layout == "NCHW" else cost_model("numpy", "float32")


def _compile(path: str):
    from nnd.compiler.frontend import compile_file

    return compile_file(path)


MODEL_OPTION = click.option("--model", "model_name", default=None, help="Which model of the file (default: the last).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nnd")
def main() -> None:
    """nnd: compile, inspect and train neural networks written in the .nnd language."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--strict", is_flag=True, help="Fail on warnings too (for CI).")
@user_errors
def check(files: tuple[str, ...], strict: bool) -> None:
    """Check model files and report every error and warning found."""
    failed = False
    for path in files:
        try:
            program = _compile(path)
        except NndError as err:
            click.echo(err.render(), err=True)
            failed = True
            continue
        warnings = [w for found in program.warnings.values() for w in found]
        if not (strict and warnings):
            click.echo(f"{path}: ok ({', '.join(program.graphs) or 'no models'})")
        for warning in warnings:
            click.echo(warning.render(program.sources), err=True)
        failed = failed or (strict and bool(warnings))
    if failed:
        sys.exit(1)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@MODEL_OPTION
@click.option("--batch-size", "-b", default=32, show_default=True, type=click.IntRange(min=1),
              help="Batch size for the activation-memory figure.")
@user_errors
def summary(file: str, model_name: str | None, batch_size: int) -> None:
    """Print layers, output shapes, parameter counts, FLOPs and activation memory, then the training
    recipe as the train section (with its defaults) sets it."""
    from nnd.compiler.summary import summarize, training_recipe

    program = _compile(file)
    name = program.model_name(model_name)
    graph = program.graphs[name]
    click.echo(summarize(graph).render(batch_size))
    click.echo(training_recipe(program.train_spec(name), graph))


@main.command("compile")
@click.argument("file", type=click.Path(dir_okay=False))
@MODEL_OPTION
@click.option("--emit", type=click.Choice(["ast", "ir", "optimized", "train"]), default="ir", show_default=True,
              help="ast: the syntax tree; ir: the inference graph; optimized: after the passes; "
                   "train: the training graph with gradients.")
@click.option("-O", "level", type=int, default=2, show_default=True, help="Optimization level, 0 to 2.")
@click.option("--no", "disabled", multiple=True, metavar="PASS", help="Turn a pass off (repeatable).")
@click.option("--dump-after", multiple=True, metavar="PASS", help="Print the IR after a pass ('all' for every one).")
@click.option("--report", is_flag=True, help="Instead of the graph, print what the passes fused, folded and "
              "removed, with the source lines and the activation memory saved per sample.")
@click.option("--layout", type=click.Choice(["NHWC", "NCHW", "measure"]), default="NHWC", show_default=True,
              help="What select-layout decides: keep every convolution in NHWC, move every one to NCHW, or "
                   "time both on this machine's NumPy backend (what training and prediction do).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write to a file.")
@user_errors
def compile_command(file: str, model_name: str | None, emit: str, level: int, disabled: tuple[str, ...],
                    dump_after: tuple[str, ...], report: bool, layout: str, output: str | None) -> None:
    """Show what the compiler makes of a model file."""
    from nnd.compiler.ir import print_graph
    from nnd.compiler.passes import PassManager, check_level, check_pass_name
    from nnd.compiler.syntax import dump

    check_level(level)  # also for --emit ast and ir, which run no passes
    for name in dump_after:
        if name != "all":
            check_pass_name(name)
    for name in disabled:
        check_pass_name(name)
    passes_asked = report or dump_after or disabled
    if passes_asked and emit == "ast":
        raise click.UsageError("--report, --dump-after and --no concern the passes over a graph: use them with "
                               "--emit optimized or train")
    if passes_asked and emit == "ir":
        emit = "optimized"  # the passes run over the inference graph
    running = PassManager.for_level(level, disabled).passes
    for name in dump_after:
        if name != "all" and name not in running:
            why = "is turned off by --no" if name in disabled else f"does not run at -O{level}"
            click.echo(f"note: --dump-after {name}: the pass {why}, so nothing is dumped after it", err=True)
    program = _compile(file)
    if emit == "ast":
        text = "\n".join(dump(module) for module in program.program.modules)
    else:
        name = program.model_name(model_name)
        graph = program.graphs[name]
        if emit == "train":
            from nnd.compiler.training_graph import build_training_graph

            graph = build_training_graph(program, name).graph
        if emit in ("optimized", "train"):
            manager = PassManager.for_level(level, disabled, dump_after=set(dump_after),
                                            dump=lambda p, t: click.echo(f"// after {p}\n{t}"),
                                            layout_costs=_layout_costs(layout))
            original, graph = graph, manager.run(graph)
        text = print_graph(graph)
        if report:
            from nnd.compiler.report import optimization_report, trace_passes

            title = f"{name} ({'training' if emit == 'train' else 'inference'} graph, -O{level})"
            stages = trace_passes(manager.passes, original, manager.layout_costs)
            text = optimization_report(original, graph, stages, title)
    _write(text, output)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@MODEL_OPTION
@click.option("--params", is_flag=True, help="Draw parameters too.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write to a file.")
@user_errors
def graph(file: str, model_name: str | None, params: bool, output: str | None) -> None:
    """Write the model's graph as DOT text, shapes on the edges."""
    from nnd.compiler.dot import graph_to_dot

    program = _compile(file)
    _write(graph_to_dot(program.graphs[program.model_name(model_name)], params), output)


BACKEND_OPTION = click.option("--backend", type=click.Choice(["numpy", "cupy"]), default="numpy", show_default=True,
                              help="Where to run.")
CUDA_GRAPHS_OPTION = click.option("--cuda-graphs/--no-cuda-graphs", default=None,
                                  help="Replay each step as one captured CUDA graph (default: on with "
                                       "--backend cupy).")
DATA_OPTIONS = [
    click.option("--data", default=None, metavar="NAME|PATH",
                 help="fashion_mnist, mnist, moving_fashion_mnist, or a .npz/.npy/.csv/.txt file (default: the "
                      "train section's data)."),
    click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                 help="Where to look for the named datasets' IDX files first."),
    click.option("--limit", type=click.IntRange(min=1), default=None,
                 help="Use only the first N samples of the data (quick trials)."),
]


def data_options(fn: Callable) -> Callable:
    for option in reversed(DATA_OPTIONS):
        fn = option(fn)
    return fn


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@MODEL_OPTION
@data_options
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the train section.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Override the train section.")
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True), default=None, help="Learning rate.")
@click.option("--validation-split", type=FiniteFloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Hold out this fraction of the training data for the val_ figures.")
@click.option("--seed", type=SEED, default=None, help="Seed for initialization, shuffling and dropout.")
@BACKEND_OPTION
@click.option("-O", "level", type=click.IntRange(0, 2), default=2, show_default=True, help="Optimization level.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory for checkpoints, weights, metrics and the source (default: runs/MODEL-TIME).")
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="Continue from a checkpoint.npz written by an earlier run.")
@click.option("--weights", type=click.Path(), default=None,
              help="Start from saved weights: weights.npz, or a run directory.")
@click.option("--overwrite", is_flag=True, help="Let --out replace the run a directory already holds.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--mixed-precision", type=click.Choice(["float16", "bfloat16"]), is_flag=False, flag_value="float16",
              default=None, help="Compute in float16 (the default, with dynamic loss scaling) or bfloat16 on "
              "float32 weights (fast on a GPU).")
@click.option("--tf32", is_flag=True, help="With --backend cupy: float32 GEMMs on Tensor Cores in TF32.")
@CUDA_GRAPHS_OPTION
@click.option("--compare-backends", "compare", is_flag=False, flag_value="numpy,cupy", default=None,
              metavar="A,B", help="Instead of training, run one training step on two backends (default "
              "numpy,cupy) and print each op's largest difference.")
@user_errors
def train(file: str, model_name: str | None, data: str | None, data_dir: str | None, limit: int | None,
          epochs: int | None, batch_size: int | None, lr: float | None, validation_split: float | None,
          seed: int | None, backend: str, level: int, out: str | None, resume: str | None, weights: str | None,
          overwrite: bool, quiet: bool, mixed_precision: str | None, tf32: bool, cuda_graphs: bool | None,
          compare: str | None) -> None:
    """Train a model on a dataset; then report the test figures when the dataset has a test split."""
    from nnd.cli_train import TrainOptions, run_parity, run_training

    if compare is not None:
        _refuse_beside_compare(click.get_current_context())
        pair = tuple(name.strip() for name in compare.split(","))
        if len(pair) != 2 or not all(pair):
            raise click.BadParameter(f"expected two backends as A,B, got {compare!r}", param_hint="--compare-backends")
        if not run_parity(file, model_name, data, data_dir, limit, batch_size, seed, level, weights, pair):
            sys.exit(1)
        return
    if resume and weights:
        raise click.UsageError("--resume and --weights are exclusive: --resume continues a run (weights, optimizer "
                               "state, epoch), --weights only starts from saved weights")
    run_training(file, TrainOptions(
        model=model_name, data=data, data_dir=data_dir, limit=limit, epochs=epochs, batch_size=batch_size, lr=lr,
        validation_split=validation_split, seed=seed, backend=backend, level=level, out=out, resume=resume,
        weights=weights, overwrite=overwrite, quiet=quiet, mixed_precision=mixed_precision, tf32=tf32,
        cuda_graphs=cuda_graphs))


# train's options that a --compare-backends step has no use for: it runs one float32 step, eagerly, on
# the two backends it names, and writes nothing
NOT_FOR_COMPARE = ("backend", "epochs", "lr", "validation_split", "out", "resume", "overwrite", "mixed_precision",
                   "tf32", "cuda_graphs")


def _refuse_beside_compare(ctx: click.Context) -> None:
    given = [next(opt for opt in param.opts if opt.startswith("--")) for param in ctx.command.params
             if param.name in NOT_FOR_COMPARE
             and ctx.get_parameter_source(param.name) is not click.core.ParameterSource.DEFAULT]
    if given:
        raise click.UsageError(f"--compare-backends runs one float32 training step on the two backends it names; "
                               f"it does not take {', '.join(given)}")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@MODEL_OPTION
@click.option("--weights", type=click.Path(), required=True, help="weights.npz, or a run directory.")
@data_options
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--confusion", is_flag=True, help="Also print a classifier's confusion matrix and per-class recall.")
@BACKEND_OPTION
@CUDA_GRAPHS_OPTION
@user_errors
def evaluate(file: str, model_name: str | None, weights: str, data: str | None, data_dir: str | None,
             limit: int | None, batch_size: int, confusion: bool, backend: str, cuda_graphs: bool | None) -> None:
    """Loss and metrics of trained weights on a dataset's test split (or on a whole file)."""
    from nnd.cli_inference import run_evaluation

    run_evaluation(file, model_name, weights, data, data_dir, limit, batch_size, backend, cuda_graphs, confusion)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@MODEL_OPTION
@click.option("--weights", type=click.Path(), required=True, help="weights.npz, or a run directory.")
@click.option("--input", "input_path", type=click.Path(dir_okay=False), required=True,
              help="A .npy or .npz of inputs, or a .csv read as training read its data.")
@click.option("--output", "output_path", type=click.Path(dir_okay=False), required=True,
              help="Where to write the outputs: .npy, .npz (one array per output) or .csv.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@BACKEND_OPTION
@CUDA_GRAPHS_OPTION
@user_errors
def predict(file: str, model_name: str | None, weights: str, input_path: str, output_path: str, batch_size: int,
            backend: str, cuda_graphs: bool | None) -> None:
    """Run trained weights on inputs from a file and write the outputs."""
    from nnd.cli_inference import run_prediction

    run_prediction(file, model_name, weights, input_path, output_path, batch_size, backend, cuda_graphs)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@MODEL_OPTION
@click.option("--weights", type=click.Path(), required=True, help="A run directory (with vocabulary.json).")
@click.option("--vocab", type=click.Path(dir_okay=False), default=None,
              help="The vocabulary (default: vocabulary.json beside the weights).")
@click.option("--prompt", default="", help="Text to continue.")
@click.option("--length", type=click.IntRange(min=1), default=200, show_default=True, help="Characters to add.")
@click.option("--temperature", type=FiniteFloatRange(min=0, min_open=True), default=0.8, show_default=True,
              help="Below 1: safer choices; above 1: more surprising ones.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@user_errors
def generate(file: str, model_name: str | None, weights: str, vocab: str | None, prompt: str, length: int,
             temperature: float, seed: int) -> None:
    """Sample text from a trained character-level language model."""
    from nnd.cli_inference import run_generation

    click.echo(run_generation(file, model_name, weights, vocab, prompt, length, temperature, seed))


@main.command("bench")
@click.argument("file", type=click.Path(dir_okay=False))
@MODEL_OPTION
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True, help="Timed runs.")
@click.option("--infer", is_flag=True, help="Time inference instead of a training step.")
@click.option("-O", "level", type=click.IntRange(0, 2), default=2, show_default=True, help="Optimization level.")
@BACKEND_OPTION
@user_errors
def bench_command(file: str, model_name: str | None, batch_size: int, steps: int, infer: bool, level: int,
                  backend: str) -> None:
    """Time a model on random data, with a breakdown per layer and per op."""
    import nnd
    from nnd.bench import bench

    model = nnd.load(file, model_name, backend=backend, opt_level=level)
    click.echo(bench(model, batch_size, steps, train=not infer))


@main.command()
@user_errors
def layers() -> None:
    """List the layer catalog with each layer's arguments."""
    from nnd.compiler.layers import LAYERS

    names: dict[int, list[str]] = {}
    for key, spec in LAYERS.items():
        names.setdefault(id(spec), []).append(key)
    for spec in sorted({id(s): s for s in LAYERS.values()}.values(), key=lambda s: s.name):
        args = ", ".join(_argument(a) for a in spec.args)
        click.echo(f"{spec.name}({args})")
        if spec.doc:
            click.echo(f"    {spec.doc.splitlines()[0]}")
        aliases = [name for name in names[id(spec)] if name != spec.name]
        if aliases:
            click.echo(f"    also called: {', '.join(aliases)}")


def _argument(arg) -> str:
    """An argument as `nnd layers` lists it: its name (and its other names), and its default if any."""
    name = "|".join((arg.name, *arg.aliases))
    return name if arg.required else f"{name}={_default(arg.default)}"


def _default(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple) and len(value) == 2 and value[0] == value[1] and isinstance(value[0], int):
        return str(value[0])
    if isinstance(value, tuple):  # as a list, which is how a model file writes it
        return "[" + ", ".join(_default(v) for v in value) + "]"
    return str(value)


def _write(text: str, output: str | None) -> None:
    if output is None:
        click.echo(text)
        return
    try:
        Path(output).write_text(text + ("" if text.endswith("\n") else "\n"), encoding="utf-8")
    except OSError as err:
        raise NndError(f"cannot write --output {output}: {err.strerror}") from None


if __name__ == "__main__":
    main()
