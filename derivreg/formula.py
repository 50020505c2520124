"""Parse differential-relation formulas into a model spec every regression form can use.

A formula states one equation of a relation that is linear in its coefficients::

    d(x, p) ~ θ_1 g_1 + θ_2 g_2 + ...        i.e.   x^(p)(t) = Σ_j θ_j g_j(t)

Left side: ``d(x)`` or ``d(x, k)``, the k-th time derivative of the column ``x`` (the *state* of
that equation). Right side: columns, their derivatives ``d(col)`` / ``d(col, k)``, and numpy
transforms in formulaic syntax (``I(x**2)``, ``x:y``, ``np.log(x)``, ``sign(d(x))``); an intercept
is included unless ``- 1`` or ``+ 0``. Several equations (a list, or a dict ``{name: formula}``)
form a system fitted jointly.

Before formulaic sees the right side, every ``d(col, k)`` is replaced by a placeholder name
(``__d1__x``); formulaic then expands the term structure (interactions, ``*``, ``**``, ``- 1``)
and each factor is evaluated as a numpy expression on whatever arrays a model supplies — measured
columns, estimated derivatives (gradient form), integrated or simulated states (integral,
trajectory, state-space forms). Stateful transforms (``center``, ``scale``, ``C``, splines) are not
supported in differential relations.

Every term is classified (:attr:`Term.kind`):

``"intercept"``
    the constant.
``"state"``
    linear in one derivative of a state variable: ``x``, ``d(x)``, ``d(x, k)`` with ``k < p``
    (:attr:`Term.var`, :attr:`Term.order` say which).
``"exogenous"``
    depends on non-state columns only (inputs ``u``, ``d(u)``, ``np.log(u)``, ``u:w``); a plain
    column or its derivative also has ``var``/``order``.
``"nonlinear"``
    any other function of the state (``sign(d(x))``, ``x:y``, ``I(x**2)``, ``x:u``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from derivreg._typing import FloatArray
from derivreg.exceptions import ColumnNotFoundError, FormulaError
from derivreg.preprocess.base import derivative_name

__all__ = [
    "Equation",
    "ModelSpec",
    "Term",
    "derivative_label",
    "parse_formula",
]

_NAME = r"[A-Za-z_][A-Za-z0-9_.]*"
_D_CALL = re.compile(r"(?<![A-Za-z0-9_.])d\(\s*(?P<name>[^,()]+?)\s*(?:,\s*(?P<k>[^()]*?)\s*)?\)")
_LHS = re.compile(r"^\s*d\(\s*(?P<name>[^,()]+?)\s*(?:,\s*(?P<k>[^()]*?)\s*)?\)\s*$")
_PLACEHOLDER = re.compile(r"__d(?P<k>\d+)__(?P<name>[A-Za-z0-9_]+)")
_IDENT = re.compile(rf"^{_NAME}$")

#: functions available inside formula expressions (besides ``np`` / ``numpy``)
EVAL_CONTEXT: dict[str, Any] = {
    "np": np,
    "numpy": np,
    "I": lambda v: v,
    "sign": np.sign,
    "abs": np.abs,
    "log": np.log,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "sin": np.sin,
    "cos": np.cos,
    "tanh": np.tanh,
}


def derivative_label(name: str, order: int) -> str:
    """Display name of the ``order``-th derivative of ``name``: ``x``, ``d(x)``, ``d(x, 2)``."""
    return derivative_name(name, order)


def _placeholder(name: str, order: int) -> str:
    return name if order == 0 else f"__d{order}__{name}"


def _parse_order(k: str | None, text: str) -> int:
    if k is None or k == "":
        return 1
    try:
        order = int(k)
    except ValueError:
        raise FormulaError(
            f"derivative order in {text!r} must be a positive integer, got {k!r}"
        ) from None
    if order < 1:
        raise FormulaError(f"derivative order in {text!r} must be >= 1, got {order}")
    return order


def _check_column_name(name: str, text: str) -> None:
    if not _IDENT.match(name) or "." in name:
        raise FormulaError(
            f"d() takes a column name and an optional integer order, got {text!r}; the "
            "derivative of an expression is not supported — add a column for it first"
        )


def _prettify(expr: str) -> str:
    """Turn placeholders back into ``d(x, k)`` and ``np.sign`` into ``sign`` for display."""

    def repl(m: re.Match[str]) -> str:
        return derivative_label(m.group("name"), int(m.group("k")))

    return _PLACEHOLDER.sub(repl, expr)


def _names_in(expr: str) -> set[str]:
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"cannot parse the expression {_prettify(expr)!r}: {exc.msg}") from None
    called = {
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    attr_roots = {
        n.value.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
    }
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return {n for n in names if n not in called and n not in attr_roots}


@dataclass(frozen=True)
class Term:
    """One right-hand term: a product of factors, each a numpy expression of columns.

    Attributes
    ----------
    name : str
        Display name (``"d(x)"``, ``"sign(d(x))"``, ``"x:y"``, ``"Intercept"``).
    kind : {"intercept", "state", "exogenous", "nonlinear"}
        Classification (see the module docstring).
    var, order : str or None, int or None
        For a plain column or derivative term (``x``, ``d(x, 2)``, ``u``): the column and order.
    factors : tuple of str
        Factor expressions with placeholders (internal names ``__dk__x``).
    variables : frozenset of (str, int)
        Every ``(column, derivative order)`` the term reads.
    """

    name: str
    kind: str
    var: str | None
    order: int | None
    factors: tuple[str, ...]
    variables: frozenset[tuple[str, int]]
    _code: tuple[Any, ...] = field(default=(), repr=False, compare=False)

    def evaluate(
        self,
        values: Mapping[tuple[str, int], Any] | Callable[[str, int], Any],
        n: int | None = None,
    ) -> Any:
        """Evaluate the term on arrays (or scalars).

        Parameters
        ----------
        values : mapping or callable
            ``values[(column, order)]`` (or ``values(column, order)``) returns the array of that
            column's ``order``-th derivative (order 0: the column itself).
        n : int, optional
            Length of the result for the intercept (default: scalar 1.0).
        """
        if self.kind == "intercept":
            return np.ones(n) if n is not None else 1.0
        get = values if callable(values) else values.__getitem__
        env: dict[str, Any] = dict(EVAL_CONTEXT)
        for var, order in self.variables:
            env[_placeholder(var, order)] = (
                get(var, order) if callable(values) else get((var, order))  # type: ignore[call-arg,arg-type]
            )
        out: Any = 1.0
        for code, expr in zip(self._code, self.factors, strict=True):
            try:
                val = eval(code, {"__builtins__": {}}, env)
            except Exception as exc:
                raise FormulaError(
                    f"cannot evaluate {_prettify(expr)!r} in term {self.name!r}: {exc}"
                ) from exc
            out = out * np.asarray(val, dtype=float) if np.ndim(val) else out * float(val)
        if n is not None and np.ndim(out) == 0:
            out = np.full(n, float(out))
        return out


@dataclass(frozen=True)
class Equation:
    """One equation ``d(response, order) ~ terms``.

    Attributes
    ----------
    name : str
        Equation label (dict key, or the left side ``"d(x)"``).
    response : str
        The state column whose derivative is on the left.
    order : int
        The derivative order ``p`` on the left.
    terms : tuple of Term
        Right-hand terms, in formulaic's order (intercept first).
    formula : str
        The formula as given.
    """

    name: str
    response: str
    order: int
    terms: tuple[Term, ...]
    formula: str

    @property
    def lhs(self) -> str:
        return derivative_label(self.response, self.order)

    @property
    def term_names(self) -> list[str]:
        return [t.name for t in self.terms]

    @property
    def has_intercept(self) -> bool:
        return any(t.kind == "intercept" for t in self.terms)

    @property
    def variables(self) -> set[tuple[str, int]]:
        """``(column, order)`` pairs read by the right side."""
        out: set[tuple[str, int]] = set()
        for t in self.terms:
            out |= set(t.variables)
        return out

    def design(
        self,
        values: Mapping[tuple[str, int], Any] | Callable[[str, int], Any],
        n: int,
    ) -> FloatArray:
        """Regressor matrix ``(n, k)``: every term evaluated on the supplied arrays."""
        if not self.terms:
            return np.empty((n, 0))
        cols = [np.broadcast_to(t.evaluate(values, n), (n,)) for t in self.terms]
        return np.column_stack(cols).astype(float)

    def rhs(
        self,
        params: Sequence[float] | FloatArray,
        values: Mapping[tuple[str, int], Any] | Callable[[str, int], Any],
        n: int | None = None,
    ) -> Any:
        """``Σ_j θ_j g_j`` for coefficients ``params`` (in term order); scalar-safe for ODEs."""
        out: Any = 0.0
        for theta, term in zip(params, self.terms, strict=True):
            out = out + float(theta) * term.evaluate(values, n)
        return out


@dataclass(frozen=True)
class ModelSpec:
    """A parsed relation: one or more equations sharing the data.

    Attributes
    ----------
    equations : tuple of Equation
    states : dict str -> int
        State variables (left-side columns) and the order of their equation.
    columns : list of str
        Every data column the relation reads (states first, then others, in order of appearance).
    exogenous : list of str
        Columns that are not states (inputs).
    """

    equations: tuple[Equation, ...]
    states: dict[str, int]
    columns: list[str]
    exogenous: list[str]

    @property
    def is_system(self) -> bool:
        return len(self.equations) > 1

    @property
    def param_names(self) -> list[str]:
        """Term names of all equations, concatenated (see :attr:`param_equations`)."""
        return [t.name for eq in self.equations for t in eq.terms]

    @property
    def param_equations(self) -> list[str]:
        """Equation label of every entry of :attr:`param_names`."""
        return [eq.name for eq in self.equations for _ in eq.terms]

    @property
    def derivatives(self) -> set[tuple[str, int]]:
        """``(column, order)`` pairs with order >= 1 read on either side."""
        out = {(eq.response, eq.order) for eq in self.equations}
        for eq in self.equations:
            out |= {(v, k) for v, k in eq.variables if k >= 1}
        return out

    @property
    def linear(self) -> bool:
        """True when no term is nonlinear in the state."""
        return all(t.kind != "nonlinear" for eq in self.equations for t in eq.terms)

    def validate(self, columns: Iterable[Any]) -> None:
        """Raise :class:`ColumnNotFoundError` for a formula column not in ``columns``."""
        have = {str(c) for c in columns}
        missing = [c for c in self.columns if c not in have]
        if missing:
            raise ColumnNotFoundError(
                f"the formula refers to column(s) {missing} that are not in the data; "
                f"columns are {sorted(have)}"
            )

    def describe(self) -> str:
        """The equations as text, one per line."""
        return "\n".join(f"{eq.lhs} ~ {' + '.join(eq.term_names) or '0'}" for eq in self.equations)


def _split(formula: str) -> tuple[str, str]:
    if not isinstance(formula, str):
        raise FormulaError(f"a formula must be a string, got {type(formula).__name__}")
    if formula.count("~") != 1:
        raise FormulaError(
            f"formula {formula!r} needs exactly one '~' with d(x) or d(x, k) on the left, "
            "e.g. 'd(x) ~ x + u'"
        )
    lhs, rhs = formula.split("~")
    if not lhs.strip():
        raise FormulaError(
            f"formula {formula!r} has no left side; write the derivative to explain, e.g. "
            "'d(x) ~ x + u'"
        )
    return lhs, rhs


def _parse_lhs(lhs: str, formula: str) -> tuple[str, int]:
    m = _LHS.match(lhs)
    if m is None:
        raise FormulaError(
            f"the left side of {formula!r} must be d(name) or d(name, k), got {lhs.strip()!r}"
        )
    name = m.group("name")
    _check_column_name(name, lhs.strip())
    return name, _parse_order(m.group("k"), lhs.strip())


def _substitute(rhs: str) -> tuple[str, set[tuple[str, int]]]:
    found: set[tuple[str, int]] = set()

    def repl(m: re.Match[str]) -> str:
        name = m.group("name")
        _check_column_name(name, m.group(0))
        k = _parse_order(m.group("k"), m.group(0))
        found.add((name, k))
        return _placeholder(name, k)

    out = _D_CALL.sub(repl, rhs)
    if re.search(r"(?<![A-Za-z0-9_.])d\(", out):
        raise FormulaError(
            f"cannot read a d(...) call in {rhs.strip()!r}: d() takes a column name and an "
            "optional integer order, e.g. d(x) or d(x, 2)"
        )
    return out, found


def _factor_variables(expr: str) -> set[tuple[str, int]]:
    out: set[tuple[str, int]] = set()
    for name in _names_in(expr):
        m = _PLACEHOLDER.fullmatch(name)
        if m:
            out.add((m.group("name"), int(m.group("k"))))
        elif name not in EVAL_CONTEXT:
            out.add((name, 0))
    return out


def _build_terms(rhs: str) -> list[tuple[str, tuple[str, ...], set[tuple[str, int]]]]:
    from formulaic import Formula
    from formulaic.errors import FormulaParsingError, FormulaSyntaxError

    text = rhs.strip() or "1"
    try:
        parsed = Formula(text)
    except (FormulaParsingError, FormulaSyntaxError, ValueError) as exc:
        raise FormulaError(f"cannot parse the right side {_prettify(text)!r}: {exc}") from None
    if hasattr(parsed, "rhs") and not isinstance(parsed, Sequence):
        parsed = parsed.rhs  # structured formula
    out = []
    for term in parsed:
        factors = tuple(str(f.expr) for f in term.factors)
        if factors == ("1",):
            out.append(("Intercept", (), set()))
            continue
        variables: set[tuple[str, int]] = set()
        for f in factors:
            variables |= _factor_variables(f)
        out.append((_prettify(":".join(factors)), factors, variables))
    return out


def _parse_one(
    formula: str, label: str | None
) -> tuple[str, int, list[tuple[str, tuple[str, ...], set[tuple[str, int]]]], str]:
    lhs, rhs = _split(formula)
    response, order = _parse_lhs(lhs, formula)
    sub, _ = _substitute(rhs)
    terms = _build_terms(sub)
    name = label if label is not None else derivative_label(response, order)
    return response, order, terms, name


def parse_formula(formula: str | Sequence[str] | Mapping[str, str] | ModelSpec) -> ModelSpec:
    """Parse a formula, a list of formulas or a dict ``{name: formula}`` into a ModelSpec.

    A :class:`ModelSpec` (already parsed, immutable) is returned unchanged, so callers that fit
    the same relation many times (``fit_many``) parse it once.

    Parameters
    ----------
    formula : str, list of str or dict
        ``"d(x) ~ x + u"``, ``"d(x, 2) ~ d(x) + u + sign(d(x))"``, or several equations, e.g.
        ``["d(x) ~ x + x:y - 1", "d(y) ~ y + x:y - 1"]`` (Lotka–Volterra).

    Returns
    -------
    ModelSpec

    Raises
    ------
    FormulaError
        No ``~`` or empty left side, a left side that is not ``d(name[, k])``, ``d()`` of an
        expression, a right-hand derivative of a state of order >= its left-hand order, or the
        same state on the left of two equations.
    """
    if isinstance(formula, ModelSpec):
        return formula
    if isinstance(formula, str):
        items: list[tuple[str | None, str]] = [(None, formula)]
    elif isinstance(formula, Mapping):
        items = [(str(k), v) for k, v in formula.items()]
    elif isinstance(formula, Sequence):
        items = [(None, f) for f in formula]
    else:
        raise FormulaError(
            f"formula must be a string, a list of strings or a dict, got {type(formula).__name__}"
        )
    if not items:
        raise FormulaError("no formula given")

    parsed = [(_parse_one(f, label), f) for label, f in items]
    states: dict[str, int] = {}
    for (response, order, _, _), _f in parsed:
        if response in states:
            raise FormulaError(
                f"{response!r} is on the left of two equations; each state has one equation"
            )
        states[response] = order
    names = [p[0][3] for p in parsed]
    if len(set(names)) != len(names):
        raise FormulaError(f"equation names must be unique, got {names}")

    equations: list[Equation] = []
    columns: list[str] = list(states)
    for (response, order, raw_terms, name), f in parsed:
        terms: list[Term] = []
        seen: set[str] = set()
        for tname, factors, variables in raw_terms:
            for var, k in variables:
                if var in states and k >= states[var]:
                    raise FormulaError(
                        f"{derivative_label(var, k)} on the right of {f!r}: a state's derivative "
                        f"on the right must be of lower order than its equation's left side "
                        f"{derivative_label(var, states[var])}"
                    )
                if var not in columns:
                    columns.append(var)
            if tname in seen:
                continue
            seen.add(tname)
            terms.append(_make_term(tname, factors, variables, states))
        equations.append(Equation(name, response, order, tuple(terms), f))
    exogenous = [c for c in columns if c not in states]
    return ModelSpec(tuple(equations), states, columns, exogenous)


def _make_term(
    name: str,
    factors: tuple[str, ...],
    variables: set[tuple[str, int]],
    states: Mapping[str, int],
) -> Term:
    if not factors:
        return Term("Intercept", "intercept", None, None, (), frozenset())
    code = tuple(compile(f, f"<term {name}>", "eval") for f in factors)
    plain = None
    if len(factors) == 1:
        m = _PLACEHOLDER.fullmatch(factors[0])
        if m:
            plain = (m.group("name"), int(m.group("k")))
        elif _IDENT.match(factors[0]) and "." not in factors[0]:
            plain = (factors[0], 0)
    uses_state = any(v in states for v, _ in variables)
    if plain is not None:
        kind = "state" if plain[0] in states else "exogenous"
        return Term(name, kind, plain[0], plain[1], factors, frozenset(variables), code)
    if not variables:
        raise FormulaError(f"term {name!r} does not depend on any column; use the intercept")
    kind = "nonlinear" if uses_state else "exogenous"
    return Term(name, kind, None, None, factors, frozenset(variables), code)
