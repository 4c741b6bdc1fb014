"""The files that make a directory loadable by `nnd.load(DIR)`: the model's exact source (with the files
it imports) under source/, and model.json naming the model and its root file. Written by `Model.save`
and by every `nnd train` run directory."""
from __future__ import annotations

import json
from pathlib import Path

from nnd.compiler.diagnostics import NndError

MANIFEST = "model.json"


def write_model_files(directory: Path, program, model: str, inputs: list[str], outputs: list[str]) -> None:
    """Create `directory` if needed and write source/ and model.json for `model` of `program`."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NndError(f"cannot create the directory {directory}: {err.strerror}") from None
    root = Path(program.program.root.file).resolve().parent
    for name, source in program.sources.items():
        path = Path(name).resolve()
        try:
            relative = path.relative_to(root)
        except ValueError:
            relative = Path(path.name)
        target = directory / "source" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.text, encoding="utf-8")
    manifest = {"model": model, "source": Path(program.program.root.file).name, "inputs": inputs,
                "outputs": outputs}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
