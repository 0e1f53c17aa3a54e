"""Small models with behaviour the tests control; pickled by value with cloudpickle."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


class Picky:
    """Doubles column 0; raises on negative input; sleeps column 1 seconds (first row)."""

    n_features_in_ = 2

    def predict(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        if (x[:, 0] < 0).any():
            raise ValueError("negative input")
        if x[0, 1] > 0:
            time.sleep(float(x[0, 1]))
        result: np.ndarray[Any, Any] = x[:, 0] * 2
        return result
