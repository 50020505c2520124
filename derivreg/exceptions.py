"""Errors and warnings raised by derivreg.

Every error derivreg raises on purpose is a subclass of :class:`DerivregError`; every warning
about a doubtful fit or a data repair is a subclass of :class:`DerivregWarning`. Catch the base
classes to handle all of them. Errors about bad input also subclass :class:`ValueError` so that
generic code that expects ``ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "AutocorrelationWarning",
    "BiasWarning",
    "ColumnNotFoundError",
    "ConvergenceError",
    "ConvergenceWarning",
    "DataError",
    "DataWarning",
    "DerivregError",
    "DerivregWarning",
    "ExcitationWarning",
    "FormulaError",
    "IdentificationError",
    "IrregularSamplingError",
    "LengthMismatchError",
    "MethodNotAvailableError",
    "NonFiniteError",
    "TimeIndexError",
    "TooFewPointsError",
]


class DerivregError(Exception):
    """Base class of every error raised by derivreg."""


class DataError(DerivregError, ValueError):
    """The data passed in cannot be used as given."""


class NonFiniteError(DataError):
    """NaN or infinite values where finite numbers are required."""


class TimeIndexError(DataError):
    """The time axis is unusable: not numeric/datetime, unsorted, duplicated or non-finite."""


class IrregularSamplingError(DataError):
    """A method that needs a regular grid was given irregularly sampled data."""


class TooFewPointsError(DataError):
    """Too few samples (per series or per segment) for the requested method."""


class ColumnNotFoundError(DataError, KeyError):
    """A column named in a formula or argument is not in the data."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class LengthMismatchError(DataError):
    """Arrays that must have the same length do not."""


class FormulaError(DerivregError, ValueError):
    """A model formula cannot be parsed or refers to something it cannot use."""


class IdentificationError(DerivregError, ValueError):
    """The coefficients are not identified: constant or collinear regressors."""


class ConvergenceError(DerivregError, RuntimeError):
    """A numerical optimisation failed to produce a usable estimate."""


class MethodNotAvailableError(DerivregError, NotImplementedError):
    """The requested method or option is not available (yet, or for this kind of relation)."""


class DerivregWarning(UserWarning):
    """Base class of every warning issued by derivreg."""


class DataWarning(DerivregWarning):
    """The data were repaired (e.g. rows with NaN dropped) before fitting."""


class ExcitationWarning(DerivregWarning):
    """Poor excitation: long steady-state stretches or near-collinear regressors."""


class AutocorrelationWarning(DerivregWarning):
    """Residuals are autocorrelated beyond what the covariance estimator assumes."""


class ConvergenceWarning(DerivregWarning):
    """An optimisation did not fully converge; the estimate may be unreliable."""


class BiasWarning(DerivregWarning):
    """The method is known to be biased in the detected noise regime."""
