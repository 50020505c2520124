"""Formula layer: parsing d(x, k) relations, term classification, evaluation, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from derivreg.exceptions import ColumnNotFoundError, FormulaError
from derivreg.formula import derivative_label, parse_formula


def test_motor_formula_terms_are_classified():
    spec = parse_formula("d(x, 2) ~ d(x) + u + sign(d(x))")
    (eq,) = spec.equations
    assert (eq.response, eq.order, eq.lhs) == ("x", 2, "d(x, 2)")
    kinds = {t.name: (t.kind, t.var, t.order) for t in eq.terms}
    assert kinds == {
        "Intercept": ("intercept", None, None),
        "d(x)": ("state", "x", 1),
        "u": ("exogenous", "u", 0),
        "sign(d(x))": ("nonlinear", None, None),
    }
    assert spec.states == {"x": 2}
    assert spec.columns == ["x", "u"]
    assert spec.exogenous == ["u"]
    assert spec.derivatives == {("x", 1), ("x", 2)}
    assert not spec.linear


def test_no_intercept_and_interactions_lotka_volterra_system():
    spec = parse_formula(["d(x) ~ x + x:y - 1", "d(y) ~ y + x:y + 0"])
    assert spec.is_system
    assert spec.param_names == ["x", "x:y", "y", "x:y"]
    assert spec.param_equations == ["d(x)", "d(x)", "d(y)", "d(y)"]
    assert not spec.equations[0].has_intercept
    xy = spec.equations[0].terms[1]
    assert xy.kind == "nonlinear" and xy.variables == {("x", 0), ("y", 0)}


def test_dict_of_equations_uses_keys_as_names():
    spec = parse_formula({"prey": "d(x) ~ x + x:y - 1", "predator": "d(y) ~ y + x:y - 1"})
    assert [eq.name for eq in spec.equations] == ["prey", "predator"]


def test_transforms_evaluate_like_numpy():
    spec = parse_formula("d(x) ~ I(x**2) + np.log(u) + d(u) + x:u")
    eq = spec.equations[0]
    kinds = {t.name: t.kind for t in eq.terms}
    assert kinds["I(x ** 2)"] == "nonlinear"
    assert kinds["np.log(u)"] == "exogenous"
    assert kinds["d(u)"] == "exogenous"
    assert kinds["x:u"] == "nonlinear"
    rng = np.random.default_rng(1)
    x, u, du = rng.uniform(1, 2, (3, 50))
    X = eq.design({("x", 0): x, ("u", 0): u, ("u", 1): du}, 50)
    expected = {
        "Intercept": np.ones(50),
        "I(x ** 2)": x**2,
        "np.log(u)": np.log(u),
        "d(u)": du,
        "x:u": x * u,
    }
    for j, name in enumerate(eq.term_names):
        np.testing.assert_allclose(X[:, j], expected[name], rtol=1e-14)


def test_rhs_is_scalar_safe_for_ode_integration():
    eq = parse_formula("d(x, 2) ~ d(x) + u + sign(d(x))").equations[0]
    vals = {("x", 1): -0.5, ("u", 0): 2.0}
    got = eq.rhs([0.1, -2.0, 3.0, 0.7], lambda v, k: vals[(v, k)])
    assert got == pytest.approx(0.1 + 1.0 + 6.0 - 0.7)


def test_validate_unknown_column():
    spec = parse_formula("d(x) ~ x + w")
    with pytest.raises(ColumnNotFoundError, match="'w'"):
        spec.validate(pd.DataFrame({"x": [1.0], "u": [2.0]}).columns)


@pytest.mark.parametrize(
    ("formula", "match"),
    [
        ("x + u", "exactly one '~'"),
        ("~ x + u", "no left side"),
        ("x ~ u", "must be d\\(name\\)"),
        ("d(x+y) ~ u", "derivative of an expression"),
        ("d(x) ~ d(x)", "lower order"),
        ("d(x, 2) ~ d(x, 3)", "lower order"),
        ("d(x, a) ~ x", "positive integer"),
        ("d(x, 0) ~ x", ">= 1"),
        ("d(x) ~ x + (", "cannot parse"),
    ],
)
def test_formula_errors(formula, match):
    with pytest.raises(FormulaError, match=match):
        parse_formula(formula)


def test_same_state_on_two_left_sides_is_an_error():
    with pytest.raises(FormulaError, match="two equations"):
        parse_formula(["d(x) ~ x", "d(x, 2) ~ x"])


def test_derivative_label():
    assert [derivative_label("x", k) for k in range(3)] == ["x", "d(x)", "d(x, 2)"]
