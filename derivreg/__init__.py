"""derivreg: estimate differential relations from sampled time series, with honest standard errors.

The front door::

    import derivreg as dr
    dr.derivative(series, method="auto")               # derivative estimators
    res = dr.fit("d(x) ~ x + u", data=df, method="integral")
    print(res.summary())

Submodules are imported lazily so that ``import derivreg`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from derivreg import accessor as _accessor  # noqa: F401  (registers df.derivreg)
from derivreg import exceptions
from derivreg.exceptions import DerivregError, DerivregWarning
from derivreg.preprocess import derivative

__version__ = "0.1.0"

_LAZY = {
    "fit": ("derivreg.api", "fit"),
    "fit_many": ("derivreg.batch", "fit_many"),
    "characterize": ("derivreg.sysid", "characterize"),
    "datasets": ("derivreg.datasets", None),
    "io": ("derivreg.io", None),
    "simulate": ("derivreg.simulate", None),
    "models": ("derivreg.models", None),
    "plotting": ("derivreg.plotting", None),
    "preprocess": ("derivreg.preprocess", None),
    "DiffRegResults": ("derivreg.results", "DiffRegResults"),
}

__all__ = [
    "DerivregError",
    "DerivregWarning",
    "__version__",
    "derivative",
    "exceptions",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'derivreg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
