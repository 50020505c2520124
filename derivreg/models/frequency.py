"""Frequency-domain regression (``method="fourier"``): the relation bin by bin after a window.

For ``x^(p)(t) = Σ_s θ_s x^(s)(t) + Σ_j θ_j w_j(t)`` (linear in the state ``x``), multiply by a
window ``w(t) = sin^{2p}(π (t - t_0)/T)`` that vanishes with its first ``2p - 1`` derivatives at
both ends of the record and take the Fourier transform ``F(f)(ω) = ∫ f(t) e^{-iω(t-t_0)} dt``.
Integration by parts (no boundary terms) gives, at every frequency,

.. math::

    F(w x^{(r)})(ω) = \\sum_{j=0}^{r} \\binom{r}{j} (iω)^{r-j} (-1)^j F(w^{(j)} x)(ω),

so the relation becomes a complex linear regression
``F(w x^{(p)}) = Σ_s θ_s F(w x^{(s)}) + Σ_j θ_j F(w g_j)`` over frequency bins. ``F(w^{(j)} x)``
are FFTs of the sampled products (trapezoid rule); the input terms ``F(w g_j)`` are integrated
exactly under ``input_hold`` (4-point Gauss–Legendre per sample interval, through one FFT per
node). Real and imaginary parts are stacked; the constant enters through ``F(w)``, i.e. the zero
bin (and its window neighbours).

A held (``"zoh"``) input kinks the state wherever it changes, and the trapezoid transform of the
state then misses an Euler–Maclaurin term proportional to each input's coefficient; it is added
to the input's column (first order; the fit iterates over ``a`` to a fixed point), so noise-free
data are fitted to ``O(Δ⁴)`` (before: 0.2% error in ``b``, a bias of +0.3 to +1.0 SD in the
recovery grid's switching cells under measurement noise; after, R = 200: |bias| <= 0.15 SD,
coverage 0.945-0.975 in cells 1, 2, 7, 10).

Band: bins ``1..m_max`` whose (5-bin averaged) power ``|F(w x)|²`` exceeds ``snr`` times the
measurement-noise level, and with ``ωΔ <= max_omega_dt`` (aliasing/quadrature error of the
sampled state grows as ``(ωΔ)²/12``), plus the zero bin.

Measurement noise ``e`` (white, variance ``τ²``) enters the state columns and the left side:
``E[F(w^{(j)} e) \\overline{F(w^{(l)} e)}] = τ² Δ² Σ_k w^{(j)}(t_k) w^{(l)}(t_k)`` exactly, so
the Gram matrix is bias-compensated by its known noise part (``τ²`` from the difference-based
estimator of :func:`~derivreg.diagnostics.robust_noise_variance`): the errors-in-variables bias
of plain complex least squares is removed.

Covariance (``"noise"``): ``G⁻¹ Xᵀ Ω X G⁻¹`` with ``Ω`` the exact covariance of the stacked
(real, imaginary) equation errors implied by white measurement noise of variance ``τ²`` — the
window correlates neighbouring bins, and ``Ω`` carries that exactly (see :func:`_residual_cov`).
A sandwich over frequency bins (Bartlett weights over ``2p + 1`` neighbours) was measured to
under-cover (0.71-0.74 at R = 300, ~15 bins), so it is not offered; a bootstrap was not needed.

Measured (``d(x) ~ x + u``, a = −1, b = 1, c = 0.5, switching input, Δ = 0.1, n = 300, τ = 0.1,
R = 1000): coverage 0.950 / 0.944 / 0.946 (a, b, c), bias −0.02 / +0.19 / +0.02 SD, SD(a) 0.038
(the state-space fit: about 0.022-0.027 — the band uses ~15 bins). Under process noise the
estimates are biased (a: +1.9 SD, coverage 0.05 at σ = 0.5): the fit compares the equation
errors with the noise-implied variance and warns (:class:`~derivreg.exceptions.BiasWarning`).
"""

from __future__ import annotations

import warnings
from math import comb
from typing import Any, ClassVar

import numpy as np

from derivreg._typing import FloatArray
from derivreg.diagnostics import robust_noise_variance
from derivreg.exceptions import BiasWarning, DataError, IdentificationError
from derivreg.models.base import Model
from derivreg.results import DiffRegResults

__all__ = ["EXCESS_WARN", "FrequencyDomain", "window_coefficients"]

#: ratio of the equation-error variance to the measurement-noise-implied one above which the
#: fit warns that process noise (or model error) biases it (measurement noise only: 95th
#: percentile 2.1; process noise: 5th percentile 11 — n = 300, Δ = 0.1)
EXCESS_WARN = 4.0
#: ratio below which the difference-based measurement-noise variance is replaced by the one the
#: equation errors imply (under a correct variance the ratio's 1st percentile was 0.24-0.35 and
#: its minimum 0.21 over 100 fits in each of four recovery-grid cells with |a|Δ = 0.1; on the
#: coarse cell |a|Δ = 0.5 with tiny noise its median was 0.009)
NOISE_RESCALE = 0.15

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(4)
_GL_NODES = 0.5 * (_GL_NODES + 1.0)
_GL_WEIGHTS = 0.5 * _GL_WEIGHTS


def window_coefficients(q: int) -> FloatArray:
    """Cosine-series coefficients ``c_l`` of ``sin^{2q}(θ) = Σ_{l=0}^{q} c_l cos(2lθ)``."""
    c = np.empty(q + 1)
    c[0] = comb(2 * q, q) / 4.0**q
    for m in range(1, q + 1):
        c[m] = 2.0 * (-1) ** m * comb(2 * q, q - m) / 4.0**q
    return c


def _window(tau: FloatArray, T: float, q: int, order: int) -> FloatArray:
    """``d^order/dt^order sin^{2q}(π τ/T)`` at ``τ = t - t_0``."""
    c = window_coefficients(q)
    lam = 2.0 * np.pi * np.arange(q + 1) / T
    out = np.zeros_like(tau, dtype=float)
    for cl, lm in zip(c, lam, strict=True):
        out += cl * lm**order * np.cos(lm * tau + order * np.pi / 2)
    return out


def _residual_cov(b: dict[str, Any], theta_state: FloatArray) -> FloatArray:
    """Covariance of the stacked (real, imaginary) equation errors of one segment's band.

    The error of bin ``m`` is ``ε_m = Σ_j B_j(ω_m) F(w^{(j)} e)(ω_m)`` with
    ``B = A_lhs - Σ_s θ_s A_s``; for white ``e``,
    ``E[F_j(ω_m) conj F_l(ω_n)] = τ² P_jl(m - n)`` and ``E[F_j(ω_m) F_l(ω_n)] = τ² P_jl(m + n)``
    with ``P_jl(d) = Δ² Σ_k w^{(j)}_k w^{(l)}_k e^{-2πi d k/N}``.
    """
    band = b["band"]
    A = b["A"]
    wj = b["wj"]
    dt = b["dt"]
    tau2 = b["tau2"]
    n = wj.shape[1]
    B = A[0][:, band].copy()
    for th, As in zip(theta_state, A[1:], strict=True):
        B -= th * As[:, band]
    nj = wj.shape[0]
    P = np.empty((nj, nj, n), dtype=complex)
    for j in range(nj):
        for m in range(nj):
            P[j, m] = np.fft.fft(wj[j] * wj[m]) * dt**2
    d_minus = (band[:, None] - band[None, :]) % n
    d_plus = (band[:, None] + band[None, :]) % n
    E_conj = np.zeros((len(band), len(band)), dtype=complex)
    E_plain = np.zeros_like(E_conj)
    for j in range(nj):
        for m in range(nj):
            E_conj += np.outer(B[j], B[m].conj()) * P[j, m][d_minus]
            E_plain += np.outer(B[j], B[m]) * P[j, m][d_plus]
    E_conj *= tau2
    E_plain *= tau2
    rr = 0.5 * (E_conj + E_plain).real
    ii = 0.5 * (E_conj - E_plain).real
    ri = 0.5 * (E_plain.imag - E_conj.imag)
    # stacked order: bin 0 real only, then (real, imaginary) per bin
    idx_re, idx_im = [], []
    pos = 0
    for m in band:
        idx_re.append(pos)
        pos += 1
        if m != 0:
            idx_im.append(pos)
            pos += 1
    has_im = band != 0
    Om = np.zeros((pos, pos))
    re = np.asarray(idx_re)
    im = np.asarray(idx_im)
    Om[np.ix_(re, re)] = rr
    Om[np.ix_(im, im)] = ii[np.ix_(has_im, has_im)]
    Om[np.ix_(re, im)] = ri[:, has_im]
    Om[np.ix_(im, re)] = ri[:, has_im].T
    return Om


class FrequencyDomain(Model):
    """Complex least squares of the windowed relation over a band of frequencies.

    Model, bin by bin (module docstring):
    ``F(w x^{(p)})(ω) = Σ_s θ_s F(w x^{(s)})(ω) + Σ_j θ_j F(w g_j)(ω) + noise``,
    measured states with white measurement noise (bias-compensated).

    Options
    -------
    snr : float
        Band: bins whose smoothed power exceeds ``snr`` times the noise level (default 10).
    max_omega_dt : float
        Highest ``ωΔ`` used (default 0.5 rad per sample).
    eiv_correction : bool
        Remove the measurement-noise part of the Gram matrix (default True).

    Regular grid only (:class:`~derivreg.exceptions.IrregularSamplingError` otherwise); one
    equation, linear in the state (others raise
    :class:`~derivreg.exceptions.MethodNotAvailableError`). Covariance ``"noise"`` (exact
    error covariance under white measurement noise); measured coverage 0.94-0.95 (module
    docstring, ``tests/test_models_frequency.py``).
    """

    method: ClassVar[str] = "fourier"
    noise_model: ClassVar[str] = (
        "white measurement noise (bias-compensated); frequency-domain scores, bins correlated "
        "by the window"
    )
    cov_types: ClassVar[tuple[str, ...]] = ("noise",)
    default_cov_type: ClassVar[str] = "noise"
    option_defaults: ClassVar[dict[str, Any]] = {
        "snr": 10.0,
        "max_omega_dt": 0.5,
        "eiv_correction": True,
    }
    supports_systems: ClassVar[bool] = False
    supports_nonlinear: ClassVar[bool] = False
    requires_regular: ClassVar[bool] = True

    def min_points(self) -> int:
        return 16

    def _segment_rows(
        self,
        rel: Any,
        pos: np.ndarray,
        t: FloatArray,
        tau2: float,
        theta_state: FloatArray | None = None,
    ) -> tuple[list[FloatArray], list[FloatArray], list[FloatArray], list[FloatArray], dict]:
        """Per bin: real design rows (X), left side (y), noise Gram parts (N_XX, n_Xy).

        ``theta_state``: the state coefficients at which the kink correction of held inputs is
        evaluated (first order; ``None``: no correction). A held input that changes at ``t_k``
        puts a kink in ``x`` there (``x'`` jumps by ``Σ_j θ_j Δg_{j,k}``), and the trapezoid
        rule behind ``F(w^{(i)} x)`` then misses (Euler–Maclaurin, on each smooth piece)
        ``Δ²/12 Σ_k w^{(i)}_k e^{-iωτ_k} Σ_j θ_j Δg_{j,k}``. That error is linear in each
        ``θ_j``: moved into the input's column it is ``(Δ²/12) (Σ_s θ_s S_s - L)`` with ``L``,
        ``S_s`` the left-side and state combinations of ``D_i = FFT(w^{(i)} Δg)``. Left
        uncorrected it biased ``b`` by +1.0 SD (switching input, Δ = 0.1, tiny noise: 0.2% of
        ``b``, O((ωΔ)²) over the band).
        """
        p = rel.order
        q = p
        n = len(t)
        dt = float(np.mean(np.diff(t)))
        T = float(t[-1] - t[0])
        tau = t - t[0]
        cols = self.columns_dict(pos)
        x = cols[(rel.response, 0)]
        omega = 2.0 * np.pi * np.fft.rfftfreq(n, d=dt)
        # F(w^{(j)} x), j = 0..p (trapezoid; the window terms vanish at both ends)
        wj = np.array([_window(tau, T, q, j) for j in range(p + 1)])
        Fx = np.fft.rfft(wj * x[None, :], axis=1) * dt  # (p+1, M)
        # noise cross-moments S_jl = Δ² Σ_k w^(j) w^(l)
        S = dt**2 * (wj @ wj.T)
        # coefficient of F(w^(j) x) in F(w x^(r)): A[r][j](ω)
        iw = 1j * omega

        def coef(r: int) -> FloatArray:
            A = np.zeros((p + 1, len(omega)), dtype=complex)
            for j in range(r + 1):
                A[j] = comb(r, j) * iw ** (r - j) * (-1) ** j
            return A

        A_lhs = coef(p)
        A_state = [coef(s) for s in rel.state_orders]
        lhs = np.sum(A_lhs * Fx, axis=0)
        state = [np.sum(A * Fx, axis=0) for A in A_state]
        # exogenous terms: exact under their hold (Gauss–Legendre nodes through FFTs)
        W = rel.exog_values(cols, n, None)
        exog = []
        for j, hold in enumerate(rel.exog_hold):
            g = W[:, j]
            acc = np.zeros(len(omega), dtype=complex)
            for xi, wt in zip(_GL_NODES, _GL_WEIGHTS, strict=True):
                s_node = tau[:-1] + xi * dt
                if hold == "zoh":
                    gv = g[:-1]
                else:
                    gv = g[:-1] * (1 - xi) + g[1:] * xi
                seq = np.zeros(n)
                seq[:-1] = _window(s_node, T, q, 0) * gv
                acc += wt * np.exp(-1j * omega * xi * dt) * np.fft.rfft(seq)
            col = acc * dt
            if theta_state is not None and p == 1 and hold == "zoh":
                dg = np.zeros(n)
                dg[1:] = np.diff(g)
                D = np.fft.rfft(wj * dg[None, :], axis=1)  # (p+1, M)
                L = np.sum(A_lhs * D, axis=0)
                S_corr = sum(
                    th * np.sum(A * D, axis=0) for th, A in zip(theta_state, A_state, strict=True)
                )
                col = col + dt**2 / 12.0 * (S_corr - L)
            exog.append(col)
        # band
        power = np.abs(Fx[0]) ** 2
        smooth = np.convolve(power, np.ones(5) / 5, mode="same")
        noise_level = tau2 * S[0, 0]
        ok = (omega * dt <= float(self.options["max_omega_dt"])) & (
            smooth > float(self.options["snr"]) * noise_level
        )
        ok[0] = True
        m_max = int(np.argmin(ok)) if not ok.all() else len(ok)
        band = np.arange(m_max)
        # state-derived columns: [lhs, state...] with coefficient arrays
        A_all = [A_lhs, *A_state]
        ks = len(A_state)
        X_rows, y_rows, NXX, nXy = [], [], [], []
        for m in band:
            xc = np.array([*(s[m] for s in state), *(e[m] for e in exog)])
            yc = lhs[m]
            # noise moments of the state-derived columns (lhs first)
            a = np.array([A[:, m] for A in A_all])  # (1+ks, p+1)
            M = tau2 * (a @ S @ a.conj().T)  # E[col_c conj(col_d)]
            k = len(xc)
            Nxx = np.zeros((k, k))
            Nxx[:ks, :ks] = M[1:, 1:].real
            nxy = np.zeros(k)
            nxy[:ks] = M[1:, 0].real
            if m == 0:
                X_rows.append(xc.real[None, :])
                y_rows.append(np.array([yc.real]))
            else:
                X_rows.append(np.vstack([xc.real, xc.imag]))
                y_rows.append(np.array([yc.real, yc.imag]))
            NXX.append(Nxx)
            nXy.append(nxy)
        info = {
            "bins": int(m_max),
            "omega_max": float(omega[m_max - 1]) if m_max else 0.0,
            "band": band,
            "A": A_all,
            "wj": wj,
            "dt": dt,
            "tau2": tau2,
        }
        return X_rows, y_rows, NXX, nXy, info

    def _fit(self, cov_type: str, **kwargs: Any) -> DiffRegResults:
        from derivreg.models.statespace import linear_relation

        if kwargs:
            raise DataError(f"unknown fit option(s) {sorted(kwargs)} for FrequencyDomain")
        rel = linear_relation(self)
        sd = self.data
        segs = list(sd.iter_segments())
        tau2_all = []
        for _, pos, t in segs:
            x = self.column(rel.response)[pos]
            tau2 = robust_noise_variance(t, x) if self.options["eiv_correction"] else 0.0
            tau2_all.append(tau2)
        k = rel.n_params
        ks = len(rel.state_orders)
        kinks = rel.order == 1 and "zoh" in rel.exog_hold
        # the difference-based noise variance reads the curvature of the path between samples
        # as noise on coarse grids (|a|Δ = 0.5: a noise SD of 0.057 read as 0.6), which inflates
        # the EIV correction (bias), the noise level of the band (few bins) and the SEs; when the
        # equation errors are far below what that variance implies (ratio < NOISE_RESCALE,
        # beyond the spread of the ratio under a correct variance) it is rescaled by the ratio
        rescaled = 1.0
        for _pass in range(4):
            theta_state: FloatArray | None = None
            # held inputs kink the state: the kink correction depends on the state coefficients, so
            # the fit is iterated to a fixed point (a few passes; the correction is O(Δ²))
            for _ in range(20 if kinks else 1):
                X_all, y_all, N_all, n_all, bands = [], [], [], [], []
                for (_, pos, t), tau2 in zip(segs, tau2_all, strict=True):
                    X, y, N, nv, info = self._segment_rows(rel, pos, t, tau2, theta_state)
                    X_all += X
                    y_all += y
                    N_all += N
                    n_all += nv
                    bands.append(info)
                n_rows = sum(len(y) for y in y_all)
                if n_rows < 2 * k + 2:
                    raise IdentificationError(
                        f"only {len(X_all)} frequency bins have a good signal-to-noise ratio "
                        f"for {k} coefficients: lower snr=, raise max_omega_dt=, or use a longer "
                        "record"
                    )
                G = sum(Xm.T @ Xm for Xm in X_all) - sum(N_all)
                g = sum(Xm.T @ ym for Xm, ym in zip(X_all, y_all, strict=True)) - sum(n_all)
                Xs = np.vstack(X_all)
                names_internal = [
                    *(f"state {s}" for s in rel.state_orders),
                    *(tm.name for tm in rel.exog_terms),
                ]
                self.check_design(Xs, names_internal)
                try:
                    beta = np.linalg.solve(G, g)
                except np.linalg.LinAlgError:
                    raise IdentificationError(
                        "the frequency-domain normal equations are singular: the coefficients are "
                        "not identified in the band used"
                    ) from None
                if not kinks:
                    break
                new_state = np.asarray(beta[:ks], dtype=float)
                if theta_state is not None and np.all(
                    np.abs(new_state - theta_state) <= 1e-10 * (1 + np.abs(new_state))
                ):
                    break
                theta_state = new_state
            n_bins = len(X_all)
            bread = np.linalg.inv(G)
            # the equation errors against what measurement noise alone implies
            resid_rows = np.concatenate(
                [ym - Xm @ beta for Xm, ym in zip(X_all, y_all, strict=True)]
            )
            meat = np.zeros((k, k))
            start = 0
            expected = 0.0
            for b in bands:
                rows = sum(1 if m == 0 else 2 for m in b["band"])
                Xb = Xs[start : start + rows]
                start += rows
                Om = _residual_cov(b, beta[:ks])
                expected += float(np.trace(Om))
                meat += Xb.T @ Om @ Xb
            excess = float(resid_rows @ resid_rows) / max(
                expected * (1 - k / len(resid_rows)), 1e-300
            )
            cov = bread @ meat @ bread
            if _pass == 3 or not self.options["eiv_correction"] or not excess < NOISE_RESCALE:
                break
            tau2_all = [t2 * excess for t2 in tau2_all]
            rescaled *= excess
        if excess > EXCESS_WARN:
            warnings.warn(
                f"the frequency-domain equation errors are {excess:.1f} times what measurement "
                "noise alone implies: process noise (or model error) is present, and the "
                "fourier estimates are then biased with intervals that do not cover (measured "
                "under process noise: bias up to 1.9 SD, coverage 0.05); use "
                "method='statespace'",
                BiasWarning,
                stacklevel=2,
            )
        perm = rel.order_index()
        params = beta[perm]
        cov = cov[np.ix_(perm, perm)]
        diag = self.diagnose(Xs, resid_rows, extra={"error / noise-implied variance": excess})
        if n_bins < 3 * k:
            warnings.warn(
                f"only {n_bins} frequency bins in the band for {k} coefficients: the "
                "frequency-domain standard errors are unreliable",
                BiasWarning,
                stacklevel=2,
            )
        info: dict[str, Any] = {
            "bins used": int(n_bins),
            "band (rad/time)": f"0 - {max(b['omega_max'] for b in bands):.4g}",
            "window": f"sin^{2 * rel.order}",
            "measurement noise variance (EIV correction)": float(np.mean(tau2_all)),
            "error / noise-implied variance": excess,
        }
        if rescaled != 1.0:
            info["noise variance rescaled (equation errors far below the difference estimate)"] = (
                rescaled
            )
        return self.make_results(
            params,
            cov,
            cov_type=cov_type,
            diagnostics=diag,
            info=info,
        )
