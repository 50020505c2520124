"""One BLAS/OpenMP thread pool limit, cheap enough to enter on every fit.

``threadpoolctl.threadpool_limits`` inspects the loaded libraries on every call (milliseconds); a
controller created once per process and its ``limit`` cost microseconds, which matters when
``fit_many`` fits thousands of small series.
"""

from __future__ import annotations

from typing import Any

__all__ = ["blas_limit"]

_CONTROLLER: Any = None


def blas_limit(limits: int | None = 1) -> Any:
    """Context manager limiting BLAS/OpenMP pools to ``limits`` threads (None: no limit)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=limits)
