"""Independent references for the kernel tests: the model equations transcribed
again in plain numpy from their docstrings (not the jitted rhs), integrated with
scipy's ``solve_ivp``, and features extracted from scipy's dense output.

Two ways to locate an extremum on a dense output:

* ``"rhs"``: the root of the model's own derivative evaluated on the interpolated
  state, dq/dt = w . f(t, y(t)). With a tight DOP853 solution this is the exact
  extremum to ~1e-10; used for the tight references.
* ``"interpolant"``: the root of the slope of the interpolating polynomial itself,
  which is the definition the kernel uses (kernels.features). Used when a scipy
  solution at the kernel's tolerance is compared feature for feature.
"""
import numpy as np
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

TIGHT = dict(method="DOP853", rtol=1e-10, atol=1e-14)


# ------------------------------------------------------------------ equations

def cart_rhs(params, auc_of_car_t=False):
    """f(t, y) of the reference CAR T model (kernels/models/cart.py docstring,
    docs/models.md#cart). With ``auc_of_car_t`` a sixth state integrates E + M + X."""
    r, Tmax, k, Kk, Ks, a, dE, gx, m, rho, dM, dX, s, c = (float(v) for v in params)

    def f(t, y):
        T, E, M, X, I = y.tolist()[:5]
        stim = T / (Ks + T)
        kill = k * E * T / (1.0 + T / Kk)
        out = [
            r * T * (1.0 - T / Tmax) - kill,
            a * stim * E - dE * E - gx * stim * E - m * E + rho * M * stim,
            m * E - dM * M - rho * M * stim,
            gx * stim * E - dX * X,
            s * kill - c * I,
        ]
        if auc_of_car_t:
            out.append(E + M + X)
        return np.array(out)

    return f


def cart2_rhs(params, auc_of_car_t=False):
    """f(t, y) of the reference model ``cart2`` (kernels/models/cart2.py
    docstring), transcribed again; with ``auc_of_car_t`` a seventh state
    integrates E + M + X."""
    (r, Tmax, Text, a, h, Ks, w_inf, tau_w, Kc, dE, gx, lam50, m, rho, dM, dX, k, Kk, Ke,
     kA, wc, dA, sI, cI, I0) = (float(v) for v in params)

    def f(t, y):
        T, E, M, X, A, I = y.tolist()[:6]
        window = w_inf + (1.0 - w_inf) * np.exp(-t / tau_w)
        stimulation = T / (Ks + T)
        engaged = T / (Kk + T + Ke * E)
        crowding = Kc / (Kc + E + M + X)
        load = T / (lam50 * E + T) if T > 0.0 else 0.0
        out = [
            r * T * (1.0 - T / Tmax) * T / (T + Text) - k * E * engaged,
            ((a * stimulation + h) * window * crowding - dE - gx * load - m) * E
            + rho * stimulation * M,
            m * E - dM * M - rho * stimulation * M,
            gx * load * E - dX * X,
            kA * E * (engaged + wc * stimulation) - dA * A,
            sI * A - cI * (I - I0),
        ]
        if auc_of_car_t:
            out.append(E + M + X)
        return np.array(out)

    return f


# the reference right-hand side of each model the kernel tests compare
REFERENCE_RHS = {"cart": cart_rhs, "cart2": cart2_rhs}


def predator_prey_rhs(params):
    """f(t, y) of kernels/models/predator_prey.py; the IL-6 state when y has 3 entries."""
    r, k, b, d = (float(v) for v in params[:4])
    sigma, gamma = (float(v) for v in params[4:6]) if len(params) > 4 else (0.0, 0.0)

    def f(t, y):
        values = y.tolist()
        T, E = values[0], values[1]
        out = [r * T - k * E * T, b * E * T - d * E]
        if len(values) > 2:
            out.append(sigma * k * E * T - gamma * values[2])
        return np.array(out)

    return f


# ------------------------------------------------------------------ solving

def solve_dense(f, y0, t0, t1, **options):
    """solve_ivp with dense output (tight DOP853 unless options say otherwise)."""
    opts = dict(TIGHT)
    opts.update(options)
    sol = solve_ivp(f, (t0, t1), np.asarray(y0, dtype=float), dense_output=True, **opts)
    assert sol.status == 0, sol.message
    return sol


def solve_with_doses(f, y0, t0, t1, dose_times, dose_states, amounts, **options):
    """Piecewise solve: restart solve_ivp at every dose time with the amount added.

    Returns ``evaluate(t, side)`` giving the state at t; at a dose time,
    ``side="post"`` is the state after the doses of that time, ``"pre"`` before.
    """
    y = np.asarray(y0, dtype=float).copy()
    boundaries = sorted(set(float(t) for t in dose_times) | {float(t0)})
    pieces = []  # (start, end, sol)
    for i, start in enumerate(boundaries):
        for t, s, a in zip(dose_times, dose_states, amounts):
            if float(t) == start:
                y[s] += a
        end = boundaries[i + 1] if i + 1 < len(boundaries) else float(t1)
        if end > start:
            sol = solve_dense(f, y, start, end, **options)
            pieces.append((start, end, sol))
            y = sol.y[:, -1].copy()

    def evaluate(t, side="post"):
        for start, end, sol in pieces:
            inside = start <= t < end if side == "post" else start < t <= end
            if inside or (t == end == pieces[-1][1]):
                return sol.sol(t)
        raise ValueError(f"time {t} outside the solved span")

    return evaluate


# ------------------------------------------------------------------ features

def _best_step_point(sol, index, sign):
    """Index of the solver's step point with the largest sign * y_index."""
    return int(np.argmax(sign * sol.y[index]))


def extremum_rhs(sol, f, index, sign):
    """(value, time) of the global max (sign=+1) or min (sign=-1) of state
    ``index`` over the solved span: the best of the solver's step points (a fine
    grid for a tight solution), refined when interior by brentq on
    dy_index/dt = f(t, y(t))_index between the neighbouring step points."""
    steps = sol.t
    i = _best_step_point(sol, index, sign)
    if i == 0 or i == steps.size - 1:
        return sol.y[index, i], steps[i]

    def slope(t):
        return f(t, sol.sol(t))[index]

    lo, hi = steps[i - 1], steps[i + 1]
    assert sign * slope(lo) >= 0 >= sign * slope(hi), "extremum not bracketed"
    t_star = brentq(slope, lo, hi, xtol=1e-13, rtol=4 * np.finfo(float).eps)
    return sol.sol(t_star)[index], t_star


def extremum_interpolant(sol, index, sign, degree=4):
    """(value, time) of the global extremum of state ``index`` on the dense
    output's polynomials, refined at roots of the polynomial's own slope inside
    the two steps around the best step point (the kernel's definition). Each
    step's polynomial of ``degree`` is recovered exactly from degree + 1 samples."""
    steps = sol.t
    i = _best_step_point(sol, index, sign)
    best_value, best_time = sign * sol.y[index, i], steps[i]
    for j in range(max(i - 1, 0), min(i + 1, steps.size - 1)):
        a, b = steps[j], steps[j + 1]
        nodes = np.cos(np.pi * (np.arange(degree + 1) + 0.5) / (degree + 1)) * 0.5 + 0.5
        samples = sign * sol.sol(a + nodes * (b - a))[index]
        poly = np.polynomial.Polynomial.fit(nodes, samples, degree, domain=[0, 1], window=[0, 1])
        for root in poly.deriv().roots():
            if abs(root.imag) < 1e-12 and 0.0 < root.real < 1.0:
                tau = a + root.real * (b - a)
                value = sign * sol.sol(tau)[index]
                if value > best_value:
                    best_value, best_time = value, tau
    return sign * best_value, best_time


def segment_integral(sol, weights, nodes=4):
    """int of w . y over the solved span, Gauss-Legendre on every step of the
    dense output: exact for polynomial interpolants up to degree 2*nodes - 1."""
    x, wq = np.polynomial.legendre.leggauss(nodes)
    a, b = sol.t[:-1], sol.t[1:]
    tq = (0.5 * (a + b)[:, None] + 0.5 * (b - a)[:, None] * x[None, :]).ravel()
    q = np.asarray(weights, float) @ sol.sol(tq)
    return float(np.sum(0.5 * (b - a) * (q.reshape(a.size, nodes) @ wq)))


def relative_error(value, reference, floor=0.0):
    """|value - reference| / max(|reference|, floor), elementwise."""
    value, reference = np.asarray(value, float), np.asarray(reference, float)
    return np.abs(value - reference) / np.maximum(np.abs(reference), floor)


def describe_worst(errors, names, values, references):
    """A short text naming the worst patient of each column (for failure messages)."""
    lines = []
    for j, name in enumerate(names):
        w = int(np.nanargmax(errors[:, j])) if np.any(np.isfinite(errors[:, j])) else 0
        lines.append(f"{name}: worst patient {w}, rel err {errors[w, j]:.3g} "
                     f"(kernel {values[w, j]!r}, reference {references[w, j]!r})")
    return "\n".join(lines)
