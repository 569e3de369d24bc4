"""Evaluation: tasks (benchmarks and probes), scoring, the runner with its paired tests, benchmarks, lm-eval.

Importing the package registers every task (tasks.py's benchmarks, then probes.py's probes), so a task name
resolves however the package is entered.
"""

from . import probes, tasks  # noqa: F401
