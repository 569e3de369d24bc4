"""Evaluation: tasks (benchmarks and probes), scoring, the runner with its paired tests, benchmarks, lm-eval.

Importing the package registers every task (tasks.py's benchmarks, probes.py's probes, then the held-out fifths
of question_sets.py), so a task name resolves however the package is entered.
"""

from . import probes, question_sets, tasks  # noqa: F401
