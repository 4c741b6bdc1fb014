"""Per-epoch training figures, as Keras' History: `history.history["val_loss"]` is a list per epoch."""
from __future__ import annotations

import csv
import io
import json

from nnd.compiler.diagnostics import counted


class History:
    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def append(self, logs: dict[str, float]) -> None:
        self.epochs.append(dict(logs))

    def since(self, start: int) -> "History":
        """The epochs from index `start` on, as a History of their own."""
        part = History()
        part.epochs = [dict(logs) for logs in self.epochs[start:]]
        return part

    @property
    def history(self) -> dict[str, list[float]]:
        keys = [k for logs in self.epochs for k in logs]
        return {k: [logs.get(k, float("nan")) for logs in self.epochs] for k in dict.fromkeys(keys)}

    def to_json(self) -> str:
        return json.dumps(self.epochs, indent=2) + "\n"

    def to_csv(self) -> str:
        keys = list(self.history)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for logs in self.epochs:
            writer.writerow({k: logs.get(k, "") for k in keys})
        return out.getvalue()

    def __repr__(self) -> str:
        return f"History({counted(len(self.epochs), 'epoch')})"
