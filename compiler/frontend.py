"""The front end's driver: source files → checked program with one graph per model and train specs."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nnd.compiler import syntax as S
from nnd.compiler.args import CallValue, Symbol
from nnd.compiler.checker import POISON, Definitions, Frame, ModelLowering, Tensor, used_before_definition
from nnd.compiler.diagnostics import Diagnostic, DiagnosticBag, NndError, did_you_mean
from nnd.compiler.imports import Program, load_program, load_program_text
from nnd.compiler.ir import Graph
from nnd.compiler.layers import INFER, LAYERS, TRAIN
from nnd.compiler.output_checks import check_outputs
from nnd.compiler.output_losses import check_output_losses
from nnd.compiler.reconstruction import check_reconstruction
from nnd.compiler.source import Span
from nnd.compiler.training import TrainSpec, check_monitors, check_train, log_name_clash
from nnd.compiler.unused import unused_layer_warnings


@dataclass
class CheckedProgram:
    program: Program
    defs: Definitions
    graphs: dict[str, Graph] = field(default_factory=dict)  # inference graphs, one per model
    trains: dict[str, TrainSpec] = field(default_factory=dict)
    # per model: what its train section makes legal but most likely a mistake
    warnings: dict[str, list[Diagnostic]] = field(default_factory=dict)

    @property
    def sources(self):
        return self.program.sources

    def model_name(self, name: str | None = None) -> str:
        """The model to use: the one named, or the only one (or the last one) of the root file."""
        if name is not None:
            if not isinstance(name, str):
                raise NndError(f"a model is chosen by its name, a str, not {type(name).__name__} "
                               f"(models: {', '.join(self.graphs) or 'none'})")
            if name not in self.graphs:
                hint = did_you_mean(name, self.graphs)
                raise NndError(f"no model named '{name}'" + (f"; did you mean '{hint}'?" if hint else "")
                               + f" (models: {', '.join(self.graphs) or 'none'})")
            return name
        root_models = [item.name for item in self.program.root.items if isinstance(item, S.ModelDef)]
        if not root_models:
            root_models = list(self.graphs)
        if not root_models:
            raise NndError(f"{self.program.root.file} defines no model")
        return root_models[-1]

    def lower(self, name: str, mode: str = INFER) -> Graph:
        """A fresh graph of the model: `infer` (dropout off, moving statistics) or `train`."""
        if mode == INFER and name in self.graphs:
            return self.graphs[name]
        bag = DiagnosticBag()
        graph = ModelLowering(self.defs, bag, mode).lower(self.defs.models[name])
        bag.raise_if_any(self.sources)
        return graph

    def train_spec(self, name: str) -> TrainSpec:
        return self.trains.get(name) or TrainSpec(model=name)


def compile_file(path: str | Path) -> CheckedProgram:
    return check_program(load_program(path))


def compile_text(text: str, name: str = "<string>", base_dir: str | Path | None = None) -> CheckedProgram:
    return check_program(load_program_text(text, name=name, base_dir=base_dir))


def check_program(program: Program) -> CheckedProgram:
    """Check every model and train section of a program; raise NndError listing every error found."""
    try:
        return _check_program(program)
    except RecursionError:  # blocks within blocks hundreds deep: a program no person writes
        root = program.root.file
        raise NndError(Diagnostic("the program is nested too deeply to check", Span(root, 1, 1, 1, 1)),
                       program.sources) from None


def _check_program(program: Program) -> CheckedProgram:
    bag = DiagnosticBag()
    defs = _collect_definitions(program, bag)
    checked = CheckedProgram(program, defs)
    for name, model in defs.models.items():
        checked.graphs[name] = ModelLowering(defs, bag, INFER).lower(model)
        checked.warnings[name] = []
    if not bag:  # after an error, a layer may be cut off from the outputs by the error, not by its author
        for name, graph in checked.graphs.items():
            checked.warnings[name] = _unique(unused_layer_warnings(graph))  # a block called twice warns once
    for name, section in defs.trains.items():
        spec = checked.trains[name] = _check_train_section(section, defs, bag)
        if name in checked.graphs:
            check_monitors(spec, list(checked.graphs[name].outputs), bag)
            clash = log_name_clash(spec, list(checked.graphs[name].outputs))
            if clash:
                message, output = clash
                bag.error(message, _output_span(defs.models[name], output) or section.span)
            misfits = check_output_losses(spec, name, list(checked.graphs[name].outputs))
            if misfits:  # the losses cannot be matched to the outputs to check them further
                bag.diagnostics.extend(misfits)
                continue
            errors, warnings = check_outputs(spec, checked.graphs[name])
            bag.diagnostics.extend(errors + check_reconstruction(spec, checked.graphs[name]))
            checked.warnings[name] += warnings + _idle_augmentations(spec, checked.graphs[name])
    if bag:  # the warnings too: one run tells everything
        warnings = [w for found in checked.warnings.values() for w in found]
        raise NndError(_unique(bag.diagnostics) + warnings, program.sources)
    return checked


def _idle_augmentations(spec: TrainSpec, graph: Graph) -> list[Diagnostic]:
    """Augmentations transform image inputs ([height, width, channels]); on a model without one they
    would do nothing, silently."""
    if not spec.augment or any(v.type.rank == 4 and v.type.dtype in ("f32", "f64") for v in graph.inputs):
        return []
    inputs = ", ".join(f"{v.name}: {v.type}" for v in graph.inputs)
    return [Diagnostic(f"{a.name} does nothing here: augmentations transform image inputs, and model "
                       f"'{graph.name}' has none ({inputs})", a.span, ("remove it from augment",),
                       severity="warning") for a in spec.augment]


def _unique(diagnostics):
    seen, result = set(), []
    for diagnostic in diagnostics:
        key = (diagnostic.message, diagnostic.span, diagnostic.notes)
        if key not in seen:
            seen.add(key)
            result.append(diagnostic)
    return result


def _collect_definitions(program: Program, bag: DiagnosticBag) -> Definitions:
    defs = Definitions()
    seen: dict[str, tuple[str, Span | None]] = {}
    evaluator = ModelLowering(defs, bag)
    # constants are evaluated in order; a bare word naming a later one is a use before its definition
    later = defs.later_constants
    later.update({item.name: item.span for module in program.modules for item in module.items
                  if isinstance(item, S.ConstDef)})
    for module in program.modules:
        for item in module.items:
            if isinstance(item, S.Import):
                continue
            key = item.model if isinstance(item, S.TrainDef) else item.name
            kind = {S.ConstDef: "constant", S.BlockDef: "block", S.ModelDef: "model",
                    S.TrainDef: "train section for"}[type(item)]
            namespace = "train" if isinstance(item, S.TrainDef) else "name"
            if (namespace, key) in seen:
                first_kind, first_span = seen[(namespace, key)]
                first = (f"'{key}' is first defined as a {first_kind} at {first_span}" if namespace == "name"
                         else f"the first train section for '{key}' is at {first_span}")
                bag.error(f"duplicate {kind} '{key}'", item.span, [first])
                if namespace == "name":
                    defs.duplicated.add(key)
                    if key in defs.consts:
                        defs.consts[key] = POISON
                continue
            seen[(namespace, key)] = (kind, item.span)
            if isinstance(item, S.BlockDef):
                _check_block_definition(item, bag)
                defs.blocks[item.name] = item
            elif isinstance(item, S.ModelDef):
                defs.models[item.name] = item
            elif isinstance(item, S.TrainDef):
                defs.trains[item.model] = item
            else:
                later.pop(item.name, None)
                defs.consts[item.name] = _eval_const(item, evaluator, bag, later)
    for name in defs.blocks:
        if name in LAYERS:
            bag.error(f"block '{name}' has the name of a built-in layer", defs.blocks[name].span,
                      ["choose another name"])
    return defs


def _check_block_definition(block: S.BlockDef, bag: DiagnosticBag) -> None:
    names: set[str] = set()
    seen_default = False
    for param in block.params:
        if param.name in names:
            bag.error(f"duplicate parameter '{param.name}' in block '{block.name}'", param.span)
        names.add(param.name)
        if param.default is not None:
            seen_default = True
        elif seen_default:
            bag.error(f"parameter '{param.name}' without a default follows one with a default", param.span)


def _eval_const(item: S.ConstDef, evaluator: ModelLowering, bag: DiagnosticBag, later: dict[str, Span | None]):
    value = evaluator.eval(item.value, Frame(locals={}))
    if isinstance(value, Symbol) and value.name in later:
        message, notes = used_before_definition(value.name, later[value.name])
        bag.error(message, value.span or item.value.span, notes)
        return POISON
    if isinstance(value, Tensor) or isinstance(value, CallValue):
        bag.error(f"constant '{item.name}' must be a number, bool, string or list", item.value.span)
        return POISON
    return value


def _check_train_section(section: S.TrainDef, defs: Definitions, bag: DiagnosticBag) -> TrainSpec:
    if section.model not in defs.models:
        hint = did_you_mean(section.model, defs.models)
        bag.error(f"train section names unknown model '{section.model}'"
                  + (f"; did you mean '{hint}'?" if hint else ""), section.span)
    evaluator = ModelLowering(defs, bag, calls_apply_layers=False)
    values = {}
    first: dict[str, Span | None] = {}
    for setting in section.settings:
        if setting.key in first:
            bag.error(f"setting '{setting.key}' given twice", setting.span,
                      [f"first given at {first[setting.key]}"])
            continue
        first[setting.key] = setting.span
        value = evaluator.eval(setting.value, Frame(locals={}))
        if value is not POISON:
            values[setting.key] = (value, setting.value.span or setting.span)
    return check_train(section, values, bag)


__all__ = ["CheckedProgram", "check_program", "compile_file", "compile_text", "TRAIN", "INFER"]


def _output_span(model: S.ModelDef, name: str) -> Span | None:
    """Where the model names its output `name`."""
    return next((stmt.span for stmt in model.body if isinstance(stmt, S.Output) and stmt.name == name), None)
