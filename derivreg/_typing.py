"""Type aliases shared across derivreg."""

from __future__ import annotations

from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.intp]
ArrayLike: TypeAlias = npt.ArrayLike
DataLike: TypeAlias = pd.DataFrame | pd.Series | np.ndarray
NanPolicy: TypeAlias = Literal["raise", "drop"]
InputHold: TypeAlias = Literal["zoh", "linear"]
