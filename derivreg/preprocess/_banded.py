"""Banded numerics of the penalised (smoothing) spline / integrated-random-walk smoother.

Shared by :mod:`derivreg.preprocess.spline` and :mod:`derivreg.preprocess.kalman`: the natural
smoothing spline of penalty order ``m``,

    minimise  sum_k w_k (y_k - f(t_k))^2 + lam * integral f^(m)(t)^2 dt,

is the posterior mean of the integrated random walk (IRW) of order ``m`` observed with white
noise (Wahba 1978; Kohn & Ansley 1987) with ``lam = r / q``: state ``x_k = (f, f', ..., f^(m-1))``
at ``t_k``, ``x_{k+1} = T_k x_k + eta_k``, ``eta_k ~ N(0, q Q_k)``, ``y_k = f(t_k) + eps_k``,
``eps_k ~ N(0, r)``, diffuse initial state. ``T_k`` and ``Q_k`` are given in METHODS.md section 1.

The joint posterior of all states is Gaussian with precision ``H / r``,

    H = W + lam * A,    A = sum_k G_k' Q_k^{-1} G_k,   G_k = [-T_k, I]  (block rows k, k+1),

``W`` the observation weights on the ``f`` components. ``H`` is block tridiagonal; in the
interleaved ordering ``(f_1, f'_1, ..., f_2, f'_2, ...)`` it is banded with ``2m - 1`` super
diagonals, so one banded Cholesky (LAPACK ``pbtrf`` via :func:`scipy.linalg.cholesky_banded`)
gives the mean, the log determinant (REML / diffuse likelihood) and, with the selected-inverse
recursion below, the diagonal blocks of ``H^{-1}`` (posterior covariances, the GCV trace) in
O(n) work. Time is expected already normalised to unit mean spacing by the caller.

Selected inverse: with ``H = U'U`` (``U`` upper banded), ``S = H^{-1}`` satisfies the Takahashi
recursion, which on the window ``V_i = S[i:i+w, i:i+w]`` reads
``V_i = M_i V_{i+1} M_i' + u_ii^{-2} e_0 e_0'`` with ``M_i`` the shift matrix whose first row is
``-U[i, i+1:i+w+1] / u_ii``. This is affine in ``V``: it is evaluated by chunked composition
(vectorised over chunks), so the Python loop runs ~2 sqrt(n) times instead of n m times.

Limits: this is the information (precision) form. Its condition number grows like
``16 (b / delta_min)^(2m)`` (``b`` the smoothing scale in samples); knots are thinned with ``b``
to bound it, but a signal that exceeds the noise by ~1e5 or more in amplitude still loses digits
in ``y'W(y - f)`` and hence in REML/ML (a covariance-form Kalman filter would not). Data are
detrended by a degree ``m - 1`` polynomial first, which removes most of that in practice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg import LinAlgError, cho_solve_banded, cholesky_banded
from scipy.linalg.blas import dsbmv

from derivreg._typing import FloatArray
from derivreg.exceptions import ConvergenceError

__all__ = ["IRWFit", "IRWProblem", "hermite_weights"]

#: a solve whose residual ``|rhs - H x|_inf`` exceeds this share of ``|rhs|_inf`` is rejected
_MAX_BACKWARD_ERROR = 1e-3


def _q_constant(m: int) -> FloatArray:
    """``C`` with ``Q(delta) = S C S``, ``S = diag(delta^(m - 1/2 - i))`` (unit intensity)."""
    c = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            p = 2 * m - 1 - i - j
            c[i, j] = 1.0 / (p * math.factorial(m - 1 - i) * math.factorial(m - 1 - j))
    return c


def sum_logdet_q(delta: FloatArray, m: int) -> float:
    """``sum_k log det Q_k`` of the unit-intensity IRW noise over all spacings."""
    _, logdet_c = np.linalg.slogdet(_q_constant(m))
    expo = m - 0.5 - np.arange(m)
    return float(len(delta) * logdet_c + 2.0 * expo.sum() * np.sum(np.log(delta)))


def _penalty_blocks(delta: FloatArray, m: int, uniform: bool = False) -> tuple[Any, Any, Any]:
    """Entries of ``T'Q^{-1}T``, ``-T'Q^{-1}`` and ``Q^{-1}`` per spacing (nested lists).

    Entries are arrays of length ``len(delta)``, or scalars when the grid is regular (the same
    block for every spacing; ``uniform`` says so, rounding in the knot times notwithstanding),
    which keeps the assembly O(n) with small constants.
    """
    d: Any
    if len(delta) and (uniform or np.ptp(delta) <= 1e-12 * float(np.mean(delta))):
        d = float(np.mean(delta))
    else:
        d = delta
    cinv = np.linalg.inv(_q_constant(m))
    expo = m - 0.5 - np.arange(m)
    sinv = [np.power(d, -e) for e in expo]
    qinv = [[cinv[a, b] * sinv[a] * sinv[b] for b in range(m)] for a in range(m)]
    tr = [
        [np.power(d, j - i) / math.factorial(j - i) if j >= i else 0.0 for j in range(m)]
        for i in range(m)
    ]
    qt = [[sum(qinv[a][c] * tr[c][b] for c in range(b + 1)) for b in range(m)] for a in range(m)]
    b11 = [[sum(tr[c][a] * qt[c][b] for c in range(a + 1)) for b in range(m)] for a in range(m)]
    b12 = [[-qt[b][a] for b in range(m)] for a in range(m)]
    return b11, b12, qinv


def _hermite_coefficients(m: int, d: int) -> FloatArray:
    """Polynomial coefficients (highest power first, per column) of the ``d``-th derivative of
    the unit-interval Hermite basis of degree ``2m-1``; shape (2m, 2m - d)."""
    deg = 2 * m - 1
    v = np.zeros((2 * m, 2 * m))
    for j in range(m):
        for i in range(j, deg + 1):
            ff = math.factorial(i) / math.factorial(i - j)
            if i == j:
                v[j, i] = ff
            v[m + j, i] = ff
    vinv = np.linalg.inv(v)  # column c: coefficients c_i of basis function c, P(s) = sum c_i s^i
    coef = np.zeros((2 * m, deg + 1 - d))
    for i in range(d, deg + 1):
        coef[:, deg - i] = vinv[i, :] * math.factorial(i) / math.factorial(i - d)
    return coef


def hermite_columns(delta: FloatArray, s: FloatArray, m: int, d: int) -> list[FloatArray]:
    """The ``2m`` weight vectors ``g_c`` with ``p^(d)(s delta) = sum_c g_c x_c`` (see
    :func:`hermite_weights`); a list of arrays shaped like ``s``."""
    coef = _hermite_coefficients(m, d)
    delta = np.asarray(delta, dtype=float)
    out = []
    for c in range(2 * m):
        power = (c % m) - d
        scale = delta**power if power != 0 else 1.0
        out.append(np.polyval(coef[c], s) * scale)
    return out


def hermite_weights(delta: FloatArray, s: FloatArray, m: int, d: int) -> FloatArray:
    """Weights ``g`` with ``p^(d)(s delta) = g . (x_j, x_{j+1})`` for the degree ``2m-1`` Hermite.

    ``p`` is the polynomial on ``[0, delta]`` whose derivatives ``0..m-1`` equal ``x_j`` at 0 and
    ``x_{j+1}`` at ``delta`` (the smoothing spline between two knots); ``s`` in ``[0, 1]`` is the
    relative position. ``delta`` and ``s`` broadcast; shape (..., 2m).
    """
    return np.stack(hermite_columns(delta, s, m, d), axis=-1)


def _band_quad(ab: FloatArray, x: FloatArray) -> float:
    """``x' B x`` for symmetric ``B`` in upper banded storage ``ab``."""
    u = ab.shape[0] - 1
    total = float(np.dot(ab[u] * x, x))
    for d in range(1, u + 1):
        total += 2.0 * float(np.dot(ab[u - d, d:] * x[:-d], x[d:]))
    return total


@dataclass
class IRWFit:
    """One factorisation of ``H = Z'WZ + lam A``: mean, residual terms, log determinant."""

    lam: float
    chol: FloatArray  # upper banded Cholesky factor of H
    mean: FloatArray  # (n_knots, m) posterior mean of the knot states
    rss: float  # sum w (y - f)^2
    pen_rss: float  # y' W (y - f) = rss + lam * x'Ax
    logdet: float  # log det H


class IRWProblem:
    """The IRW / smoothing-spline problem on fixed times, weights, data and knots.

    The states live at the knots (a subset of the data times that includes both ends); between
    knots ``f`` is the degree ``2m-1`` Hermite interpolant of the knot states, which is the exact
    smoothing spline when every data time is a knot. Knots spaced much closer than the smoothing
    scale give the same fit to many digits and keep ``H`` well conditioned when ``lam`` is huge.

    Parameters
    ----------
    tau : ndarray (n,)
        Strictly increasing times, ideally normalised to unit mean spacing.
    y : ndarray (n,)
        Data; entries with zero weight are ignored (may be NaN).
    w : ndarray (n,)
        Observation weights (0 for missing values, 1 otherwise).
    m : int
        Penalty order = IRW order = state dimension.
    step : float
        Knot spacing in mean sample spacings (:func:`knot_positions`); on a uniform grid an
        integer; ``step <= 1`` (default) = every point, the exact smoothing spline.
    """

    def __init__(
        self,
        tau: FloatArray,
        y: FloatArray,
        w: FloatArray,
        m: int,
        step: float = 0.0,
        uniform: bool | None = None,
    ) -> None:
        self.m = m
        self.n = n = len(tau)
        self.tau = tau
        self.w = np.asarray(w, dtype=float)
        self.n_obs = int(np.count_nonzero(self.w))
        self.y = y if self.n_obs == n else np.where(self.w > 0, y, 0.0)
        self.wy = self.y if self.n_obs == n and np.all(self.w == 1.0) else self.w * self.y
        self.ywy = float(np.dot(self.wy, self.y))
        self.uniform = is_uniform(tau) if uniform is None else uniform
        self.step: Any = max(1, int(step)) if self.uniform else step
        self.knots = knot_positions(tau, step, self.uniform)
        kt = tau[self.knots]
        self.n_knots = nk = len(kt)
        delta = np.diff(kt)
        self.delta = delta
        self.sum_logdet_q = sum_logdet_q(delta, m)
        self.all_knots = nk == n
        self.z: list[FloatArray] | None = None
        self._zpat: FloatArray | None = None
        u = 2 * m - 1
        self.u = u
        # column-major bands: LAPACK/BLAS copy C-ordered ones on every call (dsbmv on 3e6
        # states: 0.4 s instead of 0.03 s)
        ab = np.zeros((u + 1, nk * m), order="F")
        self._scratch: FloatArray | None = None
        # every point a knot on a uniform grid: all intervals equal up to rounding (1e-9)
        b11, b12, b22 = _penalty_blocks(delta, m, self.uniform and nk == n)
        if isinstance(b11[0][0], float):
            # the same blocks for every interval: one column pattern per knot, broadcast
            first, last = np.zeros((u + 1, m)), np.zeros((u + 1, m))
            for a in range(m):
                for b in range(a, m):
                    first[u - (b - a), b] = b11[a][b]  # block 0: as left end only
                    last[u - (b - a), b] = b22[a][b]  # last block: as right end only
                for b in range(m):
                    last[u - (m + b - a), b] = b12[a][b]  # coupling to the previous knot
            cols = ab.reshape((u + 1, m, nk), order="F")  # view: [band row, component, knot]
            cols[...] = (first + last)[:, :, None]
            cols[:, :, 0] = first
            cols[:, :, -1] = last
        else:
            stop = (nk - 1) * m
            for a in range(m):
                for b in range(a, m):
                    # (k, k) and (k+1, k+1) blocks, upper triangle: column k*m + b
                    ab[u - (b - a), b : stop + b : m] += b11[a][b]
                    ab[u - (b - a), m + b : stop + m + b : m] += b22[a][b]
                for b in range(m):
                    # (k, k+1) block: row k*m + a, column (k+1)*m + b
                    ab[u - (m + b - a), m + b : stop + m + b : m] += b12[a][b]
        self.a_band = ab
        # data term Z'WZ (banded, same pattern; with every point a knot only the weights on the
        # f-diagonal, kept as a vector: a full band would cost 100+ MB at 1e6 points) and Z'Wy
        self._zw_band: FloatArray | None = None
        self.rhs = np.zeros(nk * m)
        if self.all_knots:
            self.rhs[::m] = self.wy
        else:
            self._zw_band = np.zeros((u + 1, nk * m), order="F")
            self._data_term(tau, kt)

    @property
    def zw_band(self) -> FloatArray:
        """``Z'WZ`` in upper banded storage (built on demand when every point is a knot)."""
        if self._zw_band is None:
            band = np.zeros((self.u + 1, self.n_knots * self.m), order="F")
            band[self.u, :: self.m] = self.w
            return band
        return self._zw_band

    @property
    def interval(self) -> np.ndarray:
        """Knot interval of every data point."""
        if self.all_knots:
            return np.minimum(np.arange(self.n), self.n - 2)
        if self.uniform:
            return np.minimum(np.arange(self.n) // self.step, self.n_knots - 2)
        j = np.searchsorted(self.knots, np.arange(self.n), side="right") - 1
        return np.minimum(j, self.n_knots - 2)

    @property
    def rel(self) -> FloatArray:
        """Relative position of every data point in its knot interval, in [0, 1]."""
        if self.all_knots:
            return (np.arange(self.n) == self.n - 1).astype(float)
        j = self.interval
        kt = self.tau[self.knots]
        return np.clip((self.tau - kt[j]) / self.delta[j], 0.0, 1.0)

    def _data_term(self, tau: FloatArray, kt: FloatArray) -> None:
        """Interval, relative position and Hermite weights of every point; ``Z'WZ``, ``Z'Wy``."""
        m, u, nk, n, step = self.m, self.u, self.n_knots, self.n, self.step
        nfull = nk - 2  # intervals 0..nk-3 hold exactly ``step`` points each
        base = np.arange(nk - 1) * m
        zw, rhs = self.zw_band, self.rhs
        if nfull > 0 and self.uniform:
            pat = hermite_weights(self.delta[0], np.arange(step) / step, m, 0)  # (step, 2m)
            tail = slice(nfull * step, n)
            rel_tail = np.clip((tau[tail] - kt[-2]) / self.delta[-1], 0.0, 1.0)
            zt = hermite_weights(self.delta[-1], rel_tail, m, 0)
            self._zpat, self._ztail = pat, zt
            wb = self.w[: nfull * step].reshape(nfull, step)
            yb = self.wy[: nfull * step].reshape(nfull, step)
            r_full = np.einsum("kr,ra->ka", yb, pat)  # (nfull, 2m), no BLAS threads
            r_tail = self.wy[tail] @ zt
            stop = nfull * m
            for a in range(2 * m):
                rhs[a : stop + a : m] += r_full[:, a]
                rhs[base[-1] + a] += r_tail[a]
                for b in range(a, 2 * m):
                    if self.n_obs == n:
                        v_full: Any = float(np.dot(pat[:, a], pat[:, b]))
                    else:
                        v_full = np.einsum("kr,r->k", wb, pat[:, a] * pat[:, b])
                    zw[u - (b - a), b : stop + b : m] += v_full
                    zw[u - (b - a), base[-1] + b] += float(
                        np.dot(self.w[tail], zt[:, a] * zt[:, b])
                    )
        else:
            j = self.interval
            zc = hermite_columns(self.delta[j], self.rel, m, 0)
            self.z = zc
            for a in range(2 * m):
                wza = self.w * zc[a]
                rhs[base + a] += np.bincount(j, weights=wza * self.y, minlength=nk - 1)
                for b in range(a, 2 * m):
                    val = np.bincount(j, weights=wza * zc[b], minlength=nk - 1)
                    zw[u - (b - a), base + b] += val

    def project(self, v: FloatArray) -> FloatArray:
        """``Z'W v``: the right-hand side of the smoothing system for data ``v`` (O(n)).

        With it ``H^{-1} Z'W v`` smooths any series with the fitted factor, e.g. the fitted
        values themselves (the twice-smoothing bias estimate of :mod:`spline`).
        """
        m = self.m
        wv = np.where(self.w > 0, self.w * v, 0.0)
        out = np.zeros(self.n_knots * m)
        if self.all_knots:
            out[::m] = wv
            return out
        g = self._weights_at_data(0)
        j = self.interval
        for c in range(m):
            out[c::m] += np.bincount(j, weights=g[c] * wv, minlength=self.n_knots)
            out[m + c :: m] += np.bincount(j, weights=g[m + c] * wv, minlength=self.n_knots)[
                : self.n_knots - 1
            ]
        return out

    def _weights_at_data(self, d: int) -> list[FloatArray]:
        """Hermite weight columns of the ``d``-th derivative at every data point."""
        if d == 0 and self.z is not None:
            return self.z
        if d == 0 and self._zpat is not None:
            nfull = self.n_knots - 2
            cols = np.vstack([np.tile(self._zpat, (nfull, 1)), self._ztail])
            return [cols[:, c] for c in range(2 * self.m)]
        j = self.interval
        return hermite_columns(self.delta[j], self.rel, self.m, d)

    # ------------------------------------------------------------------ evaluation
    def at_data(self, states: FloatArray, d: int) -> FloatArray:
        """``d``-th derivative (in ``tau`` units) at the data times from knot states (nk, m)."""
        m = self.m
        if self.all_knots and d < m:
            return states[:, d].copy()
        j = self.interval
        g = self._weights_at_data(d)
        out = np.zeros(self.n)
        for c in range(m):
            out += g[c] * states[j, c] + g[m + c] * states[j + 1, c]
        return out

    def var_at_data(self, blocks: FloatArray, d: int) -> FloatArray:
        """Diagonal of ``Z_d H^{-1} Z_d'`` at the data times from the joint blocks (nk, 2m, 2m)."""
        m = self.m
        if self.all_knots and d < m:
            return blocks[:, d, d].copy()
        j = self.interval
        g = self._weights_at_data(d)
        out = np.zeros(self.n)
        for a in range(2 * m):
            for b in range(a, 2 * m):
                out += (1.0 if a == b else 2.0) * g[a] * g[b] * blocks[j, a, b]
        return out

    # ------------------------------------------------------------------ factorisation
    def factor(self, lam: float, need_rss: bool = True, scratch: bool = False) -> IRWFit:
        """Factorise ``H = Z'WZ + lam A`` and solve for the posterior mean.

        With ``scratch`` the factor is written into a buffer owned by the problem and reused by
        the next ``scratch`` call (trial fits of a search: fresh 100 MB arrays cost more in page
        faults than the factorisation itself); :meth:`release_scratch` hands it to a fit for good.
        """
        m = self.m
        if scratch:
            if self._scratch is None:
                self._scratch = np.empty_like(self.a_band)  # column-major like a_band
            ab = np.multiply(self.a_band, lam, out=self._scratch)
        else:
            ab = lam * self.a_band
        if self._zw_band is None:
            ab[self.u, ::m] += self.w
        else:
            ab += self._zw_band
        try:
            cb = cholesky_banded(ab, lower=False, overwrite_ab=True, check_finite=False)
        except LinAlgError as exc:
            raise ConvergenceError(
                f"the smoothing system is not positive definite at lambda={lam:.3g} "
                "(too few observed points for the penalty order, or too ill-conditioned)"
            ) from exc
        x = cho_solve_banded((cb, False), self.rhs, check_finite=False)
        # iterative refinement: H can be ill-conditioned (cond ~ 1e10-1e12) and y'W(y - Zx)
        # below cancels; each step multiplies the error by ~cond eps. A second step only when
        # the first correction was not already negligible, for x or for the likelihood (its
        # effect on -2 log L, n * |rhs . dx| / pen, below 0.01: what is left is cond eps times
        # that).
        converged = False
        for it in range(2):
            dx = cho_solve_banded(
                (cb, False), self._residual(lam, x), overwrite_b=True, check_finite=False
            )
            x += dx
            if max(dx.max(), -dx.min()) <= 1e-9 * max(x.max(), -x.min()):
                converged = True
                break
            if it == 0:
                pen_now = self.ywy - float(np.dot(self.rhs, x))
                if self.n_obs * abs(float(np.dot(self.rhs, dx))) <= 0.01 * abs(pen_now):
                    break
        if not converged:
            # cond(H) near 1 / eps: Cholesky can "succeed" with a factor so wrong that the
            # refinement diverges (seen for the septic spline, m = 4, at lam_tau ~ 1e12 with
            # knots every 2 samples: residual 280 x the right-hand side, fitted values 100 x
            # the data). Check the backward error of the final solution.
            res = self._residual(lam, x)
            scale = max(float(np.max(np.abs(self.rhs))), 1e-300)
            if not float(np.max(np.abs(res))) <= _MAX_BACKWARD_ERROR * scale:
                raise ConvergenceError(
                    f"the smoothing system is too ill-conditioned at lambda={lam:.3g} "
                    "(the solve does not reproduce its right-hand side)"
                )
        mean = x.reshape(self.n_knots, m)
        # y'W(y - Zx) and |W^(1/2)(y - Zx)|^2 without forming Zx: O(knots)
        rx = float(np.dot(self.rhs, x))
        pen = self.ywy - rx
        if not need_rss:
            rss = math.nan
        elif self._zw_band is None:
            rss = self.ywy - 2.0 * rx + float(np.dot(self.w * x[::m], x[::m]))
        else:
            rss = self.ywy - 2.0 * rx + _band_quad(self._zw_band, x)
        logdet = 2.0 * float(np.sum(np.log(cb[self.u])))
        return IRWFit(lam, cb, mean, rss, pen, logdet)

    def _residual(self, lam: float, x: FloatArray) -> FloatArray:
        """``rhs - H x`` with ``H = Z'WZ + lam A`` (banded products, O(knots))."""
        hx = dsbmv(self.u, lam, self.a_band, x)
        if self._zw_band is None:
            hx[:: self.m] += self.w * x[:: self.m]
        else:
            hx = dsbmv(self.u, 1.0, self._zw_band, x, beta=1.0, y=hx, overwrite_y=1)
        return np.subtract(self.rhs, hx, out=hx)

    def release_scratch(self) -> None:
        """Let the fit that holds the scratch buffer keep it (the next fit allocates anew)."""
        self._scratch = None

    def neg2_loglik(self, fit: IRWFit, r: float | None = None) -> tuple[float, float]:
        """``-2 log`` diffuse likelihood and the noise variance used (profiled when ``r=None``).

        ``-2 l = (n_o - m) log(2 pi r) + S / r - (K-1) m log lam + sum log|Q_k| + log|H|``
        with ``S = y'W(y - f)`` and ``K`` knots; profiling gives ``r = S / (n_o - m)``.
        """
        dof = self.n_obs - self.m
        if r is None:
            r = max(fit.pen_rss, 1e-300) / dof
        val = (
            dof * math.log(2 * math.pi * r)
            + fit.pen_rss / r
            - (self.n_knots - 1) * self.m * math.log(fit.lam)
            + self.sum_logdet_q
            + fit.logdet
        )
        return val, r

    # ------------------------------------------------------------------ selected inverse
    def selected_inverse(self, fit: IRWFit, full: bool | str) -> FloatArray:
        """Blocks of ``H^{-1}``.

        Returns (K, 2m, 2m), the joint block of ``(x_j, x_{j+1})`` at every knot (entries past
        the end are zero), if ``full`` is true; (K, m), the variances of the ``m`` states at
        every knot, if ``full == "diag"``; else (K,), the ``f``-``f`` diagonal entries only.
        """
        m, u = self.m, self.u
        cb = fit.chol
        n_state = cb.shape[1]
        w = 2 * m
        diag = cb[u]
        # v[i, s-1] = U[i, i+s] / U[i, i], s = 1..u (zero beyond the end)
        n_chunks = max(1, int(3 * math.sqrt(n_state / m)))  # ~1.4x faster than 1x
        length = -(-n_state // n_chunks)
        length = -(-length // m) * m  # chunks start at block boundaries
        n_pad = n_chunks * length
        v = np.zeros((n_pad, w))  # padded from the start: no 100 MB copy
        for s in range(1, u + 1):
            v[: n_state - s, s - 1] = cb[u - s, s:] / diag[: n_state - s]
        dvec = np.zeros(n_pad)
        dvec[:n_state] = 1.0 / diag**2
        v = v.reshape(n_chunks, length, w)
        dvec = dvec.reshape(n_chunks, length)

        def step(mat: FloatArray, vi: FloatArray, di: FloatArray) -> FloatArray:
            x = np.einsum("cij,cj->ci", mat, vi)
            new = np.empty_like(mat)
            new[:, 1:, 1:] = mat[:, :-1, :-1]
            new[:, 0, 1:] = -x[:, :-1]
            new[:, 1:, 0] = -x[:, :-1]
            new[:, 0, 0] = np.einsum("ci,ci->c", vi, x) + di
            return new

        # pass 1: particular solution and transfer matrix of every chunk
        s_part = np.zeros((n_chunks, w, w))
        phi = np.broadcast_to(np.eye(w), (n_chunks, w, w)).copy()
        for j in range(length - 1, -1, -1):
            vi = v[:, j]
            s_part = step(s_part, vi, dvec[:, j])
            row0 = -np.einsum("ci,cij->cj", vi, phi)
            phi = np.concatenate([row0[:, None, :], phi[:, :-1, :]], axis=1)
        # pass 2: window just past the end of every chunk, sequentially from the last chunk
        start = np.zeros((n_chunks, w, w))
        cur = np.zeros((w, w))
        for c in range(n_chunks - 1, -1, -1):
            start[c] = cur
            cur = phi[c] @ cur @ phi[c].T + s_part[c]
        # pass 3: re-run every chunk from its true end window, keep block-start windows
        nb = length // m
        diag = full == "diag"
        if diag:
            out = np.empty((n_chunks, nb, m))
        else:
            out = np.empty((n_chunks, nb, w, w)) if full else np.empty((n_chunks, nb))
        idx = np.arange(m)
        mat = start
        for j in range(length - 1, -1, -1):
            mat = step(mat, v[:, j], dvec[:, j])
            if j % m == 0:
                if diag:
                    out[:, j // m] = mat[:, idx, idx]
                else:
                    out[:, j // m] = mat if full else mat[:, 0, 0]
        return out.reshape(n_chunks * nb, *out.shape[2:])[: self.n_knots]

    def trace_hat(self, fit: IRWFit) -> float:
        """Trace of the hat matrix ``W Z H^{-1} Z'`` = ``trace(H^{-1} Z'WZ)``, O(knots)."""
        if self.all_knots:
            d = self.selected_inverse(fit, full=False)
            return float(np.sum(self.w * d))
        blocks = self.selected_inverse(fit, full=True)
        m, u = self.m, self.u
        n_state = self.n_knots * m
        base = np.arange(self.n_knots) * m
        total = 0.0
        for a in range(m):
            for b in range(a, 2 * m):
                col = base + b
                ok = col < n_state
                zw = self.zw_band[u - (b - a), col[ok]]
                total += (1.0 if a == b else 2.0) * float(np.dot(blocks[ok, a, b], zw))
        return total


# ---------------------------------------------------------------------- smoothing selection
#: knots are spaced at most ``b / _KNOT_RATIO[m]`` apart (``b = lam^(1/2m)``, the smoothing scale
#: in samples): the restricted spline then equals the full one to ~1e-6 while the condition
#: number of ``H`` stays near ``16 * ratio^(2m)`` ~ 1e7 instead of ``16 * lam``. From ``m = 4``
#: the state scaling adds its own ill-conditioning (backward errors 1e-5 to 2e-3 at
#: ``ratio^(2m) = 1e5``, up to 0.2 with the refinement's finer knots): ``ratio^(2m) = 1e4`` there.
_KNOT_RATIO = {m: 10.0 ** ((5.0 if m <= 3 else 4.0) / (2 * m)) for m in range(1, 8)}

CRITERIA = ("reml", "gcv")


def knot_step(log10_b: float, m: int) -> float:
    """Knot spacing (a power of two, in mean sample spacings) for the smoothing scale ``b``.

    May be below 1: on an irregular grid it sets the shortest knot interval allowed.
    """
    return float(2.0 ** math.floor(math.log2(10.0**log10_b / _KNOT_RATIO[m])))


def is_uniform(t: FloatArray) -> bool:
    """True when ``t`` is evenly spaced to 1e-9 relative."""
    if len(t) < 3:
        return True
    dt = np.diff(t)
    return bool(np.ptp(dt) <= 1e-9 * abs(float(dt.mean())))


def knot_positions(tau: FloatArray, step: float, uniform: bool) -> np.ndarray:
    """Positions of the knots for a knot spacing of ``step`` samples (mean spacings).

    A uniform grid gets every ``step``-th point plus the last one (no interval shorter than
    ``step / 2``; ``step <= 1`` is every point). An irregular grid gets at most one knot per bin
    of width ``step`` (in ``tau`` units) and no knot interval shorter than ``step / 2``:
    near-coincident times would otherwise make ``Q^{-1} ~ delta^(1-2m)`` explode; points between
    knots are still used (through the Hermite interpolant).
    """
    n = len(tau)
    if uniform:
        if step <= 1:
            return np.arange(n)
        step = int(step)
        pos = np.arange(0, n, step)
        if n - 1 - pos[-1] < step / 2 and len(pos) > 1:
            pos = pos[:-1]
        return np.append(pos, n - 1)
    g = float(step)
    if g <= 0.0:
        return np.arange(n)
    span = tau - tau[0]
    bins = np.floor(span / g)
    first = np.flatnonzero(np.r_[True, bins[1:] != bins[:-1]])
    gaps = np.diff(span[first], prepend=-np.inf)
    pos = first[gaps >= g / 2]
    if pos[-1] != n - 1:
        if span[-1] - span[pos[-1]] < g / 2 and len(pos) > 1:
            pos = pos[:-1]
        pos = np.append(pos, n - 1)
    return pos


#: early stopping of the smoothing walk needs the residual variance within this factor of the
#: pilot noise variance (see :meth:`SmoothingSearch.search`)
_PILOT_GATE = 2.0
#: residual variance beyond this multiple of the pilot: the fit is far from the noise level
_PILOT_FAR = 10.0
#: a rise of -2 log-likelihood this large over one grid step ends the walk of a long series
_STEEP_RISE = 100.0


def pilot_noise_variance(y: FloatArray, w: FloatArray, k: int) -> float:
    """Difference-based pilot estimate of the noise variance (observed points only).

    ``sigma^2 ~ mean((Delta^k y)^2) / C(2k, k)``: the ``k``-th differences of white noise have
    variance ``C(2k, k) sigma^2`` while those of a signal smooth on the sampling scale vanish,
    so this is the noise variance plus a (positive) signal leak. Used only to gate the search.
    """
    obs = np.asarray(y)[np.asarray(w) > 0]
    if len(obs) <= k:
        return 0.0
    d = np.diff(obs, k)
    return float(np.mean(d * d)) / math.comb(2 * k, k)


@dataclass
class Selection:
    """Outcome of the smoothing-parameter search."""

    problem: IRWProblem
    fit: IRWFit
    lam: float  # in normalised time units (unit mean spacing)
    r: float  # noise variance used
    value: float  # criterion value
    criterion: str
    n_eval: int
    at_bound: str | None  # "lower"/"upper" when the optimum is at the search limit


class SmoothingSearch:
    """Choose ``lam`` of the IRW / spline problem by REML, GCV or ML with ``r`` or ``q`` fixed.

    The search runs over ``log10 b`` with ``lam = b^(2m)``; the knot spacing follows ``b`` (see
    :func:`knot_step`), problems are cached per spacing.
    """

    def __init__(self, tau: FloatArray, y: FloatArray, w: FloatArray, m: int) -> None:
        self.tau, self.y, self.w, self.m = tau, y, w, m
        self.n = len(tau)
        self.uniform = is_uniform(tau)
        self.min_gap = float(np.min(np.diff(tau))) if self.n > 1 else 1.0
        self._problems: dict[int, IRWProblem] = {}
        self.n_eval = 0
        self.pilot_r = pilot_noise_variance(y, w, m)
        #: walk as for a long series (coarse grid, early stop); default: above 1e5 points
        self.walk_long: bool | None = None

    def _norm_step(self, step: float) -> float:
        if self.uniform:
            return max(1, int(step))
        return 0.0 if step * 0.5 < self.min_gap else step  # 0: every point is a knot

    def _key(self, log10_b: float, step: float | None) -> tuple[float, float]:
        """Memo key of an evaluation: ``log10 b`` and the knot step actually used."""
        return (
            round(log10_b, 9),
            self._norm_step(knot_step(log10_b, self.m) if step is None else step),
        )

    def problem(self, step: float) -> IRWProblem:
        step = self._norm_step(step)
        if step not in self._problems:
            self._problems[step] = IRWProblem(
                self.tau, self.y, self.w, self.m, step, uniform=self.uniform
            )
        return self._problems[step]

    def evaluate(
        self,
        log10_b: float,
        criterion: str,
        r: float | None = None,
        q: float | None = None,
        step: float | None = None,
        scratch: bool = False,
    ) -> tuple[float, IRWProblem, IRWFit, float]:
        """Criterion value (smaller is better), problem, fit and noise variance at ``b``.

        The knots follow ``b`` (:func:`knot_step`) unless ``step`` is given. With ``scratch``
        the fit's factor lives in the problem's reusable buffer (see :meth:`IRWProblem.factor`).
        """
        m = self.m
        lam = 10.0 ** (2 * m * log10_b)
        prob = self.problem(knot_step(log10_b, m) if step is None else step)
        self.n_eval += 1
        try:
            fit = prob.factor(lam, need_rss=criterion == "gcv", scratch=scratch)
        except ConvergenceError:
            return math.inf, prob, None, math.nan  # type: ignore[return-value]
        if not (fit.pen_rss > 0 and math.isfinite(fit.logdet)):
            return math.inf, prob, fit, math.nan  # numerically unusable factorisation
        if criterion == "gcv":
            tr = prob.trace_hat(fit)
            dof = max(prob.n_obs - tr, 1e-12)
            value = prob.n_obs * fit.rss / dof**2
            return value, prob, fit, fit.rss / dof
        if q is not None:
            r = lam * q
        value, r_used = prob.neg2_loglik(fit, r)
        return value, prob, fit, r_used

    def fixed(self, lam: float, criterion: str = "reml", r: float | None = None) -> Selection:
        """No search: the problem at the given ``lam``."""
        log10_b = math.log10(lam) / (2 * self.m)
        value, prob, fit, r_used = self.evaluate(log10_b, criterion, r)
        if fit is None:
            raise ConvergenceError(f"the smoothing system failed at lambda={lam:.3g}")
        return Selection(prob, fit, lam, r_used, value, criterion, self.n_eval, None)

    def search(
        self,
        criterion: str,
        r: float | None = None,
        q: float | None = None,
        bounds: tuple[float, float] | None = None,
    ) -> Selection:
        """Minimise the criterion over ``log10 b`` in ``bounds`` (default ``-0.5 .. log10 n + 1``).

        A downward walk on a grid (half decade above 1e5 points, else quarter) from the
        smoothest end finds the basin, then safeguarded parabolic steps refine it with the knots
        of the bracket's low end fixed (:func:`_refine`). Series above 1e5 points cross the
        plateau at the smooth end with double strides and stop the walk past the basin, but
        only once the residual variance has come within ``_PILOT_GATE`` of the pilot noise
        variance (:func:`pilot_noise_variance`): before, the walk stopped on the plateau itself
        and returned a flat fit (lam -> inf) at >= 3e5 points. Shorter series walk the whole
        grid.
        """
        memo: dict[tuple[float, float], tuple[float, float]] = {}
        dof = max(int(np.count_nonzero(self.w)) - self.m, 1)

        # the best fit so far keeps its factor (the scratch buffer it was computed in); the
        # buffer of the one it replaces becomes the problem's scratch: no refit at the end
        held: dict[str, Any] = {"v": math.inf}

        def value(x: float, step: float | None = None) -> tuple[float, float]:
            """Criterion and residual variance ``y'W(y - f) / dof`` at ``x = log10 b``."""
            key = self._key(x, step)
            if key not in memo:
                v, prob, fit, r_used = self.evaluate(x, criterion, r, q, key[1], scratch=True)
                memo[key] = (v, math.inf if fit is None else fit.pen_rss / dof)
                if fit is not None and v < held["v"]:
                    prob.release_scratch()
                    if held.get("prob") is prob:
                        prob._scratch = held["fit"].chol
                    held.update(v=v, key=key, prob=prob, fit=fit, r=r_used)
            return memo[key]

        lo, hi = bounds if bounds is not None else (-0.5, math.log10(self.n) + 1.0)
        long = self.n > 100_000 if self.walk_long is None else self.walk_long
        spacing = 0.5 if long else 0.25
        grid = np.arange(hi, lo - 1e-9, -spacing)
        best_x, best_v = float(grid[0]), math.inf
        rising = 0
        # The smooth end is a plateau: while b exceeds the signal's own scale the fit is the
        # detrending polynomial, the criterion rises slowly as b falls and only drops once the
        # fit starts to follow the signal. A walk that stops "in the first basin" therefore
        # stops on the plateau (lam -> infinity, a flat estimate; the failure at >= 3e5 points).
        # Early stopping is allowed only once the fit has reached the noise level, i.e. its
        # residual variance is within _PILOT_GATE of a difference-based pilot estimate.
        # Long series cross the plateau with double strides while the residual variance is
        # still above _PILOT_FAR times the pilot (far from the basin: r(b) decreases with b),
        # then walk every grid point from the last such point on.
        start = 0
        if long:
            k = 0
            while k < len(grid) and value(float(grid[k]))[1] > _PILOT_FAR * self.pilot_r:
                start, k = k, k + 2
        resolved = False
        for x in grid[start:]:
            v, resid = value(float(x))
            if resid <= _PILOT_GATE * self.pilot_r:
                resolved = True
            if v < best_v:
                best_x, best_v, rising = float(x), v, 0
            else:
                rising += 1
                # a steep rise (-2 log L up by > _STEEP_RISE, GCV by > 10%) is past the basin
                steep = v - best_v > (_STEEP_RISE if criterion != "gcv" else 0.1 * abs(best_v))
                if long and resolved and math.isfinite(best_v) and (rising >= 3 or steep):
                    break  # long series: stop the walk in the basin (saves full-size fits)
        if not math.isfinite(best_v):
            raise ConvergenceError(
                "the smoothing criterion could not be evaluated at any smoothing level"
            )
        # refine with the knots of the bracket's low end fixed: a smooth criterion; the grid
        # values at the same knots are reused (memo). Tolerance in log10 b: 0.02 for long
        # series (lam to ~15%, which moves the derivative RMSE by ~5% on the benchmark signal).
        a, c = max(lo, best_x - spacing), min(hi, best_x + spacing)
        step = knot_step(a, self.m)
        x_ref, v_ref = _refine(lambda x: value(x, step)[0], a, best_x, c, 0.02 if long else 0.005)
        if math.isfinite(v_ref) and v_ref <= value(best_x, step)[0]:
            x_opt = x_ref
        else:
            x_opt, step = best_x, None
        if held.get("key") == self._key(x_opt, step):
            val, prob, fit, r_used = held["v"], held["prob"], held["fit"], held["r"]
        else:
            val, prob, fit, r_used = self.evaluate(x_opt, criterion, r, q, step)
        self._problems = {}
        at_bound = None
        if x_opt - lo < 0.02:
            at_bound = "lower"
        elif hi - x_opt < 0.02:
            at_bound = "upper"
        lam = 10.0 ** (2 * self.m * x_opt)
        return Selection(prob, fit, lam, r_used, val, criterion, self.n_eval, at_bound)


def _refine(
    f: Any, a: float, b: float, c: float, tol: float, max_eval: int = 15
) -> tuple[float, float]:
    """Minimise ``f`` from the bracket ``a < b < c`` (``f(b)`` below both ends) to ``tol / 2``.

    Parabolic steps through the bracket, golden-section steps where the parabola is unusable
    or, as in Brent's method, its step is not below half the step before last (on a curve flat
    on one side and steep on the other the parabola's vertex otherwise creeps towards the
    minimum: 15 steps for GCV at 2e4 points); when the parabola lands within ``tol / 2`` of ``b``
    the points ``b +- tol / 2`` are tried (the vertex's side first), and the search ends when
    neither improves on ``b``. Values
    already known to a memoised ``f`` cost nothing (the walk's grid). Returns the best point and
    its value; when ``b`` is not below both ends (the knots differ from the walk's), the best of
    the three points.
    """
    gold = 0.3819660112501051
    fa, fb, fc = f(a), f(b), f(c)
    if not (fb <= fa and fb <= fc):
        return min(((fa, a), (fb, b), (fc, c)))[::-1]
    h = tol / 2
    tested: set[int] = set()  # sides of b tried at distance h without improvement

    def closed(side: int) -> bool:
        return side in tested or (c - b <= h if side > 0 else b - a <= h)

    steps = [math.inf, math.inf]  # the last two steps
    for _ in range(max_eval):
        den = (b - a) * (fb - fc) - (b - c) * (fb - fa)
        num = (b - a) ** 2 * (fb - fc) - (b - c) ** 2 * (fb - fa)
        x = b - 0.5 * num / den if den < 0 else math.nan
        if not a < x < c or abs(x - b) >= 0.5 * steps[0]:
            x = b + gold * (c - b) if c - b > b - a else b - gold * (b - a)
        steps = [steps[1], abs(x - b)]
        if abs(x - b) < h:
            side = 1 if x >= b else -1
            if closed(side):
                side = -side
            if closed(side):
                break
            x = b + side * h
        fx = f(x)
        if fx < fb:
            if x < b:
                c, fc = b, fb
            else:
                a, fa = b, fb
            b, fb = x, fx
            tested = set()
        else:
            if x < b:
                a, fa = x, fx
            else:
                c, fc = x, fx
            if abs(x - b) <= 1.0001 * h:
                tested.add(1 if x > b else -1)
    return b, fb


# ---------------------------------------------------------------------- long series: blocks
#: series longer than this choose ``lam`` on blocks (:func:`block_lambda`)
BLOCK_FROM = 100_000
#: number and length of the blocks
_N_BLOCKS, _BLOCK_LEN = 4, 10_000


class _CompositeSearch(SmoothingSearch):
    """Smoothing search whose criterion is the sum over contiguous blocks of the series.

    The sum of the blocks' REML criteria is a composite likelihood (blocks treated as
    independent); for GCV the blocks' scores are summed. Either is minimised at the same
    smoothing scale (in samples) as the whole series when the series is statistically alike
    along its length, at the cost of ~1/2 of a full-size fit in total.
    """

    def __init__(self, parts: list[SmoothingSearch], m: int) -> None:
        self.parts, self.m = parts, m
        self.tau = np.concatenate([p.tau for p in parts])
        self.y = np.concatenate([p.y for p in parts])
        self.w = np.concatenate([p.w for p in parts])
        self.n = len(self.tau)
        self.uniform = all(p.uniform for p in parts)
        self.min_gap = min(p.min_gap for p in parts)
        self._problems = {}
        self.n_eval = 0
        self.walk_long = True
        n_obs = [max(float(np.count_nonzero(p.w)), 1.0) for p in parts]
        self.pilot_r = float(np.average([p.pilot_r for p in parts], weights=n_obs))

    def evaluate(
        self,
        log10_b: float,
        criterion: str,
        r: float | None = None,
        q: float | None = None,
        step: float | None = None,
        scratch: bool = False,
    ) -> tuple[float, IRWProblem, IRWFit, float]:
        self.n_eval += 1
        total, r_sum, out = 0.0, 0.0, None
        for p in self.parts:
            v, prob, fit, r_used = p.evaluate(log10_b, criterion, r, q, step)
            if fit is None or not math.isfinite(v):
                return math.inf, prob, None, math.nan  # type: ignore[return-value]
            total += v
            r_sum += r_used
            out = (prob, fit)
        assert out is not None
        return total, out[0], out[1], r_sum / len(self.parts)


def block_lambda(
    tau: FloatArray,
    y: FloatArray,
    w: FloatArray,
    m: int,
    criterion: str,
    parts: list[SmoothingSearch] | None = None,
) -> tuple[float, int, list[SmoothingSearch]]:
    """``lam`` (in ``tau`` units) chosen on ``_N_BLOCKS`` evenly spaced blocks of a long series.

    Returns ``lam``, the number of block evaluations and the blocks' searches (their problems
    are reused by callers that score a penalty order on the blocks, or pass them back as
    ``parts`` to search another criterion). Measured on the benchmark sines at 1e6 points: the
    derivative RMSE as with the full-series search, in ~1/4 of the time.
    """
    if parts is None:
        n = len(tau)
        starts = np.linspace(0, n - _BLOCK_LEN, _N_BLOCKS).astype(int)
        parts = []
        for s in starts:
            sl = slice(int(s), int(s) + _BLOCK_LEN)
            parts.append(SmoothingSearch(tau[sl], y[sl], w[sl], m))
    comp = _CompositeSearch(parts, m)
    sel = comp.search(criterion, bounds=(-0.5, math.log10(_BLOCK_LEN) + 1.0))
    return sel.lam, comp.n_eval * _N_BLOCKS, parts
