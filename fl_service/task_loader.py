"""Find the task module the built-in app runs.

The task contract (docs/architecture.md "Task contract") survives only as what the built-in
Flower app `fl_service.apps.builtin:app` runs on a client, and as the GA's default model and
central evaluation; a user's own code is a Flower app (`app_dir`, `client_app`).

`load_task(cfg)` imports cfg["task"] (a Python import path, e.g. `my_pkg.my_task`) when it is
set, else the built-in `fl_service.tasks.<cfg["dataset"]>`, and checks that the module exposes
the task contract's callables. A module that lacks one raises
ValueError("task: <path> lacks <name>").
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from fl_service.choices import DATASETS

BUILTIN_TASKS = {name: f"fl_service.tasks.{name}" for name in DATASETS}
CONTRACT = ("load_model", "load_data", "train", "test")


def task_path(cfg: Mapping[str, Any]) -> str:
    if cfg.get("task"):
        return str(cfg["task"])
    dataset = cfg["dataset"]
    if dataset not in BUILTIN_TASKS:
        raise ValueError(f"dataset: must be one of {', '.join(BUILTIN_TASKS)}, got {dataset!r}")
    return BUILTIN_TASKS[dataset]


def load_task(cfg: Mapping[str, Any]) -> ModuleType:
    path = task_path(cfg)
    try:
        module = importlib.import_module(path)
    except ImportError as exc:
        raise ValueError(f"task: cannot import {path}: {exc}") from exc
    for name in CONTRACT:
        if not callable(getattr(module, name, None)):
            raise ValueError(f"task: {path} lacks {name}")
    return module
