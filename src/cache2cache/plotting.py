"""matplotlib for PNG files only (the Agg backend, no display), imported when a plot is drawn: code that draws one
plot at its end (fitting, profiling) starts without it."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
