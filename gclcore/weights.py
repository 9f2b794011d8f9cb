"""Score-to-weight (STW) functions: a ranked pair's position / score -> its weight in the GCL loss.

The paper's list of STW functions and its default are not public (the book's methods page, "Choices the
paper leaves open"),
so this is a registry of named, documented candidates that the book ablates. Each reads one column of
the training rows (``position`` unless stated), returns float32 weights, and states its range for the
published data (positions 1..100, ``score_linear = 101 - position``).

=================  ==========================================  ===========================
name               formula (p = position)                      range for p in 1..100
=================  ==========================================  ===========================
``constant``       w = 1 (binary relevance: the CLIP baseline)  {1}
``linear``         w = (101 - p) / 100                          [0.01, 1]
``reciprocal``     w = 1 / p                                    [0.01, 1]
``log``            w = 1 / log2(p + 1)  (the DCG discount)      [0.150, 1]
``power:a``        w = ((101 - p) / 100) ** a   (a > 0)         [0.01**a, 1]
``rank-exp:b``     w = b ** (p - 1)   (0 < b <= 1)              [b**99, 1]
``score_linear``   w = the column as is (101 - p)               [1, 100]
``score_reciprocal`` w = the column as is (1 / p)               [0.01, 1]
``no_score``       w = the column as is (1)                     {1}
=================  ==========================================  ===========================

Positions beyond 100 are clipped to 100 by ``linear`` / ``power`` so weights stay positive.
:func:`get_stw` also accepts a user callable ``f(positions: np.ndarray) -> np.ndarray``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

MAX_POSITION = 100


@dataclass(frozen=True)
class ScoreToWeight:
    """A named STW function reading column ``source`` of the training rows."""

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    source: str = "position"
    formula: str = ""

    def __call__(self, rows: Mapping | object) -> np.ndarray:
        """Weights for a table (DataFrame or mapping of columns) of training rows."""
        try:
            values = np.asarray(rows[self.source], dtype=np.float64)
        except KeyError as err:
            raise KeyError(f"STW {self.name!r} reads column {self.source!r}, which the rows lack") from err
        weights = np.asarray(self.fn(values), dtype=np.float64)
        if weights.shape != values.shape or not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError(f"STW {self.name!r} must give one finite, non-negative weight per row")
        return weights.astype(np.float32)


def _linear(p):
    return (MAX_POSITION + 1 - np.clip(p, 1, MAX_POSITION)) / MAX_POSITION


REGISTRY: dict[str, ScoreToWeight] = {
    "constant": ScoreToWeight("constant", lambda p: np.ones_like(p), formula="1"),
    "linear": ScoreToWeight("linear", _linear, formula="(101 - p) / 100"),
    "reciprocal": ScoreToWeight("reciprocal", lambda p: 1.0 / p, formula="1 / p"),
    "log": ScoreToWeight("log", lambda p: 1.0 / np.log2(p + 1.0), formula="1 / log2(p + 1)"),
    "score_linear": ScoreToWeight("score_linear", lambda s: s, "score_linear", "score_linear"),
    "score_reciprocal": ScoreToWeight("score_reciprocal", lambda s: s, "score_reciprocal", "score_reciprocal"),
    "no_score": ScoreToWeight("no_score", lambda s: s, "no_score", "no_score"),
}
PARAMETRIC = {
    "power": lambda a: ScoreToWeight(f"power:{a:g}", lambda p: _linear(p) ** a, formula=f"((101 - p) / 100) ** {a:g}"),
    "rank-exp": lambda b: ScoreToWeight(f"rank-exp:{b:g}", lambda p: b ** (p - 1.0), formula=f"{b:g} ** (p - 1)"),
}


def get_stw(spec: str | Callable | ScoreToWeight) -> ScoreToWeight:
    """Resolve ``"linear"``, ``"power:2"``, ``"rank-exp:0.95"``, a :class:`ScoreToWeight`, or a callable of
    positions."""
    if isinstance(spec, ScoreToWeight):
        return spec
    if callable(spec):
        return ScoreToWeight(getattr(spec, "__name__", "custom"), spec, formula="user function of position")
    name, _, param = str(spec).partition(":")
    if name in PARAMETRIC:
        try:
            value = float(param) if param else {"power": 2.0, "rank-exp": 0.95}[name]
        except ValueError as err:
            raise ValueError(f"bad parameter in STW {spec!r}") from err
        if value <= 0 or (name == "rank-exp" and value > 1):
            raise ValueError(f"STW {spec!r}: parameter out of range")
        return PARAMETRIC[name](value)
    if param or name not in REGISTRY:
        raise ValueError(f"unknown STW {spec!r}; choose from {', '.join(available())}")
    return REGISTRY[name]


def available() -> list[str]:
    return list(REGISTRY) + [f"{name}:<x>" for name in PARAMETRIC]
