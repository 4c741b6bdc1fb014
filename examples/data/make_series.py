"""Writes series.csv: ten years of a synthetic daily temperature reading (a yearly cycle, a slow trend,
weather that persists for days, and measurement noise), the data of examples/forecast.nnd.

Run: python examples/data/make_series.py
"""
from pathlib import Path

import numpy as np


def main() -> None:
    rng = np.random.default_rng(2024)
    days = np.arange(3650)
    weather = np.zeros(len(days))
    for day in days[1:]:  # an AR(1) process: today's anomaly keeps 80 % of yesterday's
        weather[day] = 0.8 * weather[day - 1] + rng.normal(0.0, 1.2)
    temperature = 12.0 + 9.0 * np.sin(2 * np.pi * (days - 100) / 365.25) + 0.0005 * days + weather
    temperature += rng.normal(0.0, 0.4, len(days))
    lines = ["day,temperature"] + [f"{d},{t:.2f}" for d, t in zip(days, temperature)]
    (Path(__file__).parent / "series.csv").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
