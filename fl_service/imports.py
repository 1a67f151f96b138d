"""Resolve the config's "module:attribute" paths (Flower's component syntax) to objects."""

from __future__ import annotations

import importlib
from typing import Any

from fl_service.config import ConfigError, split_import_path


def load_object(value: str, key: str) -> Any:
    """The object `value` names; ConfigError naming `key` when it cannot be imported or found."""
    module_name, attr = split_import_path(value, key)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an app's import may fail in any way; report it as one line
        raise ConfigError(key, f"cannot import {module_name}: {exc}".splitlines()[0]) from None
    try:
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ConfigError(key, f"{module_name} has no attribute {attr!r}") from None
    return obj
