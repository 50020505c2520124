"""Regression forms of a differential relation, one module per form, all returning DiffRegResults.

Classes are imported lazily: ``GradientOLS``, ``IntegralOLS``, ``ARIMAX``, ``StateSpace``,
``FrequencyDomain``, ``Trajectory`` and ``AutoModel`` (a form whose module is not installed raises
:class:`~derivreg.exceptions.MethodNotAvailableError`). See :mod:`derivreg.models.base` for how
to add a form.
"""

from __future__ import annotations

import importlib
from typing import Any

from derivreg.exceptions import MethodNotAvailableError
from derivreg.models.base import Model

__all__ = [
    "ARIMAX",
    "AutoModel",
    "FrequencyDomain",
    "GradientOLS",
    "IntegralOLS",
    "Model",
    "StateSpace",
    "Trajectory",
]

_CLASSES = {
    "GradientOLS": "derivreg.models.gradient",
    "IntegralOLS": "derivreg.models.integral",
    "ARIMAX": "derivreg.models.arimax",
    "StateSpace": "derivreg.models.statespace",
    "FrequencyDomain": "derivreg.models.frequency",
    "Trajectory": "derivreg.models.trajectory",
    "AutoModel": "derivreg.models.auto",
}


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        module = _CLASSES[name]
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                raise MethodNotAvailableError(f"{name} is not available in this version") from exc
            raise
        return getattr(mod, name)
    raise AttributeError(f"module 'derivreg.models' has no attribute {name!r}")
