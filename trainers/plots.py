"""Figures shared by every algorithm (matplotlib, headless)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no screen on servers and Ray workers
import matplotlib.pyplot as plt  # noqa: E402

SKIPPED_KEYS = {"iteration", "iteration_seconds", "elapsed_seconds", "setup_seconds", "final_seconds", "lr", "done", "stopped_early", "best_iteration"}


def plot_learning_curves(history: list[dict[str, float]], metric: str):
    """One panel per reported quantity (loss first, the early-stopping metric highlighted)."""
    keys = [k for k in history[0] if k not in SKIPPED_KEYS and isinstance(history[0][k], (int, float))]
    keys.sort(key=lambda k: (k != "loss", k != metric, k))
    keys = keys[:6]
    columns = min(3, len(keys)) or 1
    rows = (len(keys) + columns - 1) // columns or 1
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    iterations = [row.get("iteration", i + 1) for i, row in enumerate(history)]
    for axis, key in zip(axes.flat, keys):
        axis.plot(iterations, [row.get(key, float("nan")) for row in history],
                  color="tab:red" if key == metric else "tab:blue")
        axis.set_title(key + ("  (early-stopping metric)" if key == metric else ""), fontsize=9)
        axis.set_xlabel("iteration")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(keys):]:
        axis.set_visible(False)
    figure.tight_layout()
    return figure
