"""Embedding nnd in a program: define a model in text, train it on your own arrays, use it.

Run: python examples/embed.py
"""
from __future__ import annotations

import numpy as np

import nnd

MODEL = """
model rings {
    input point: [2]
    dense(32, activation=relu)
    dense(32, activation=relu)
    dense(1, activation=sigmoid)
}

train rings {
    optimizer  = adam(lr=0.01)
    loss       = binary_crossentropy
    metrics    = [accuracy, auc]
    epochs     = 30
    batch_size = 32
    seed       = 7
}
"""


def make_rings(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 fills the disc of radius 1.2, class 1 the ring between 0.9 and 2. Where they overlap, the
    disc is the likelier class, so the best any classifier can do is 1 - 0.5 * 0.3 / 1.1, about 0.864."""
    inner, outer = n // 2, n - n // 2
    radius = np.concatenate([1.2 * np.sqrt(rng.uniform(0.0, 1.0, inner)), rng.uniform(0.9, 2.0, outer)])
    angle = rng.uniform(0.0, 2 * np.pi, n)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).astype(np.float32)
    y = np.concatenate([np.zeros(inner), np.ones(outer)]).astype(np.float32)
    return x, y


def main() -> float:
    rng = np.random.default_rng(0)
    x_train, y_train = make_rings(2000, rng)
    x_test, y_test = make_rings(500, rng)

    model = nnd.loads(MODEL)
    model.fit(x_train, y_train, verbose=0)
    scores = model.evaluate(x_test, y_test)
    print(f"test loss {scores['loss']:.4f}, accuracy {scores['accuracy']:.3f}, auc {scores['auc']:.3f}")

    # Custom use of the trained weights: classify a few points by hand.
    probe = [[0.0, 0.0], [1.05, 0.0], [1.8, 0.0], [0.0, -1.6]]
    ring = model.predict(np.array(probe, dtype=np.float32))[:, 0]
    print("P(ring) for", probe, "=", [round(float(p), 3) for p in ring])
    return scores["accuracy"]


if __name__ == "__main__":
    main()
