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
    """Points inside radius 1 are class 0, points in the ring between 1.3 and 2 are class 1."""
    radius = np.concatenate([rng.uniform(0.0, 1.0, n // 2), rng.uniform(1.3, 2.0, n - n // 2)])
    angle = rng.uniform(0.0, 2 * np.pi, n)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).astype(np.float32)
    y = (radius > 1.15).astype(np.float32)
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
    probe = np.array([[0.0, 0.0], [1.8, 0.0], [0.0, -1.6]], dtype=np.float32)
    print("P(ring) for", probe.tolist(), "=", np.round(model.predict(probe)[:, 0], 3).tolist())
    return scores["accuracy"]


if __name__ == "__main__":
    main()
