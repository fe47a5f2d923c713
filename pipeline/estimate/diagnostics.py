"""Goodness-of-fit diagnostics of a population fit and their plots.

Per observation row (:func:`diagnose`):

    PRED    f(t, exp(X_i coef)): the population prediction (eta = 0)
    IPRED   f(t, exp(phi_i mode)): the individual prediction at the EBE
    IWRES   the weighted residual of y against IPRED (:func:`residuals.weighted_residuals`)
    NPD     normalised prediction discrepancy: Phi^-1 of the fraction of the
            data's simulated replicates (fitted population, observed design)
            below y, clipped to [1/(2S), 1 - 1/(2S)] for S replicates
            (Comets, Brendel & Mentre 2008, Comput Methods Programs Biomed
            90:154; the NPDE without decorrelation within an individual)

Visual predictive check (:func:`vpc_bins`, :func:`plot_vpc`): the replicates
are binned in time with the data; in each bin the 5th, 50th and 95th
percentiles of the observations are drawn over the 90% range (5th-95th
percentile over replicates) of the same percentiles of the simulated data.
Censored rows count at their limit of quantification, and simulated values
below the limit of their observation name (the median limit of its censored
rows) are set to it, so both sides are censored alike; the fraction
censored per bin is then plotted against its simulated range too.

Simulated values that are not finite (an individual drawn beyond a
parameter's bound, e.g. Stein's FB >= 1, a parameter overflowing exp(phi), a
failed solve) are left out: NPDs, percentiles, bands and censored fractions
come from the finite values, and :func:`nonfinite_note` says in one line how
many there were and why (``Diagnostics.nonfinite``).
"""
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from pipeline.estimate.residuals import weighted_residuals
from pipeline.figures import pyplot, save

PERCENTILES = (5.0, 50.0, 95.0)
BAND = (5.0, 95.0)
MAX_DISTINCT_TIMES = 12
DEFAULT_BINS = 10


@dataclass(frozen=True, eq=False)
class Diagnostics:
    """Per observation row: ``pred``, ``ipred``, ``iwres``, ``npd`` (NaN on
    censored rows); ``simulated`` float64[S, M] replicates of the data, censored
    like the data; ``limits`` {name: limit of quantification or None};
    ``nonfinite`` :func:`nonfinite_note` of the replicates (None when every
    value is finite)."""

    pred: np.ndarray
    ipred: np.ndarray
    iwres: np.ndarray
    npd: np.ndarray
    simulated: np.ndarray
    limits: dict
    nonfinite: str = None


def _limits(observations):
    data = observations.data
    return {name: (float(np.median(data.value[data.blq & (data.name == name)]))
                   if np.any(data.blq & (data.name == name)) else None)
            for name in observations.names}


def censor(values, observations, limits):
    """Values below their observation name's limit set to the limit."""
    floor = np.array([limits[n] if limits[n] is not None else -np.inf
                      for n in observations.names])[observations.groups]
    return np.maximum(values, floor)


def npd(observed, simulated, censored):
    """Normalised prediction discrepancies (module docstring) over the S finite
    replicates of each row; NaN where censored or no replicate is finite."""
    s = np.isfinite(simulated).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        below = (((simulated < observed[None]).sum(axis=0)
                  + 0.5 * (simulated == observed[None]).sum(axis=0)) / s)
        pd = np.clip(below, 0.5 / s, 1 - 0.5 / s)
    return np.where(censored | (s == 0), np.nan, ndtri(pd))


def nonfinite_note(many, phi, simulated):
    """One line: how many simulated values [S, M] are not finite, in how many
    simulated individuals and replicates, and why: per individual (of
    ``many``, the replicated observations, with log parameters ``phi``) a
    parameter at or beyond the structural model's ``upper`` bound (predicted
    NaN by design), a parameter overflowing exp(phi), else a failed
    prediction (a failed solve). None when every value is finite."""
    bad = ~np.isfinite(simulated)
    if not bad.any():
        return None
    individuals = np.unique(many.data.individual[bad.ravel()])
    theta = many.theta(phi[individuals])
    structural = many.structural
    left = np.ones(individuals.size, bool)
    reasons = []
    for name, bound in getattr(structural, "upper", {}).items():
        hit = left & ~(theta[:, structural.parameter_names.index(name)] < bound)
        reasons.append((int(hit.sum()), f"{name} >= {bound:g} (beyond the model's bound)"))
        left &= ~hit
    hit = left & ~np.isfinite(theta).all(axis=1)
    reasons.append((int(hit.sum()), "a parameter overflowing exp(phi)"))
    left &= ~hit
    reasons.append((int(left.sum()), "a failed prediction (e.g. a failed solve)"))
    why = ", ".join(f"{count:,} with {what}" for count, what in reasons if count)
    return (f"VPC: {int(bad.sum()):,} of {bad.size:,} simulated values are not finite, in "
            f"{individuals.size:,} of {many.n_individuals:,} simulated individuals and "
            f"{int(bad.any(axis=1).sum()):,} of {bad.shape[0]:,} replicates ({why}); "
            f"NPDs and VPC bands use the finite values")


def diagnose(result, simulations, rng):
    """The :class:`Diagnostics` of a :class:`saem.FitResult`."""
    observations = result.observations
    data = observations.data
    population = result.design.mean(result.coef)
    pred = observations.predict(population)
    ipred = observations.predict(result.mode)
    iwres = np.where(data.blq, np.nan, weighted_residuals(
        observations.residual, data.value, ipred, observations.sigma_rows(result.sigma)))
    limits = _limits(observations)
    many, phi = observations.sample_population(population, result.omega, simulations, rng)
    raw = many.simulate(many.predict(phi), result.sigma, rng).reshape(simulations, -1)
    simulated = censor(raw, observations, limits)
    return Diagnostics(pred, ipred, iwres, npd(data.value, simulated, data.blq), simulated,
                       limits, nonfinite_note(many, phi, raw))


def time_bins(time, bins):
    """Bin index per row and the bins' representative (median) times: one bin
    per distinct time when there are at most 12 (and ``bins`` is 0), else
    ``bins`` (default 10) bins of about equal counts."""
    distinct = np.unique(time)
    if bins == 0 and distinct.size <= MAX_DISTINCT_TIMES:
        return np.searchsorted(distinct, time), distinct
    edges = np.unique(np.quantile(time, np.linspace(0, 1, (bins or DEFAULT_BINS) + 1)))
    index = np.clip(np.searchsorted(edges, time, side="right") - 1, 0, edges.size - 2)
    centres = np.array([np.median(time[index == b]) for b in range(edges.size - 1)])
    return index, centres


@dataclass(frozen=True)
class VpcBins:
    """One observation name's VPC: bin times [B]; observed percentiles [3, B];
    simulated percentile bands [3, B, 2] (low, high) and medians [3, B];
    observed and simulated fraction censored [B] and [B, 2] (None when the
    name has no limit)."""

    name: str
    times: np.ndarray
    observed: np.ndarray
    band: np.ndarray
    median: np.ndarray
    censored_observed: np.ndarray = None
    censored_band: np.ndarray = None


def _finite_fraction_below(values, limit):
    """Per row of values[S, R]: the fraction of its finite values <= limit."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (values <= limit).sum(axis=1) / np.isfinite(values).sum(axis=1)


def vpc_bins(result, diagnostics, bins):
    """[:class:`VpcBins`] per observation name, from the finite simulated
    values (np.nanpercentile; a bin with no finite value stays NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)       # all-NaN slices
        return _vpc_bins(result, diagnostics, bins)


def _vpc_bins(result, diagnostics, bins):
    observations = result.observations
    data = observations.data
    out = []
    for name in observations.names:
        rows = data.name == name
        index, times = time_bins(data.time[rows], bins)
        observed, simulated = data.value[rows], diagnostics.simulated[:, rows]
        obs_pct = np.full((len(PERCENTILES), times.size), np.nan)
        sim_pct = np.full((len(PERCENTILES), times.size, simulated.shape[0]), np.nan)
        for b in range(times.size):
            here = index == b
            if here.any():
                obs_pct[:, b] = np.percentile(observed[here], PERCENTILES)
                sim_pct[:, b] = np.nanpercentile(simulated[:, here], PERCENTILES, axis=1)
        limit = diagnostics.limits[name]
        censored = censored_band = None
        if limit is not None:
            fractions = np.array([_finite_fraction_below(simulated[:, index == b], limit)
                                  for b in range(times.size)])
            censored = np.array([data.blq[rows][index == b].mean() for b in range(times.size)])
            censored_band = np.nanpercentile(fractions, BAND, axis=1).T
        out.append(VpcBins(name, times, obs_pct,
                           np.moveaxis(np.nanpercentile(sim_pct, BAND, axis=2), 0, 2),
                           np.nanmedian(sim_pct, axis=2), censored, censored_band))
    return out


# -- plots ----------------------------------------------------------------------

def _log_scales(result):
    """(log x for time, log y for values): time when every time > 0, values when
    every observation and prediction is > 0."""
    data = result.observations.data
    return bool(np.all(data.time > 0)), bool(np.all(data.value > 0))


def _scatter_observed(ax, x, y, blq, **style):
    ax.scatter(x[~blq], y[~blq], s=8, alpha=0.5, **style)
    if blq.any():
        ax.scatter(x[blq], y[blq], s=14, marker="v", facecolors="none", edgecolors="red",
                   label="BLQ (at the limit)")


def plot_gof(result, diagnostics, path):
    """gof.png: observed vs PRED and IPRED, IWRES and NPD vs time."""
    plt = pyplot()
    data = result.observations.data
    log_time, log_values = _log_scales(result)
    fig, axes = plt.subplots(2, 2, figsize=(10, 8.5))
    for ax, predicted, title in ((axes[0, 0], diagnostics.pred, "population (PRED)"),
                                 (axes[0, 1], diagnostics.ipred, "individual (IPRED, EBE)")):
        _scatter_observed(ax, predicted, data.value, data.blq, color="tab:blue")
        finite = np.concatenate([predicted[np.isfinite(predicted)], data.value])
        finite = finite[finite > 0] if log_values else finite
        low, high = finite.min(), finite.max()
        ax.plot([low, high], [low, high], color="black", lw=1)
        if log_values:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel("predicted")
        ax.set_ylabel("observed")
        ax.set_title(f"observed vs {title}")
    for ax, values, title in ((axes[1, 0], diagnostics.iwres, "IWRES"),
                              (axes[1, 1], diagnostics.npd, "NPD")):
        ax.scatter(data.time, values, s=8, alpha=0.5, color="tab:blue")
        for level, style in ((0, "-"), (-1.96, "--"), (1.96, "--")):
            ax.axhline(level, color="black", lw=1, ls=style)
        if log_time:
            ax.set_xscale("log")
        ax.set_xlabel("time (days)")
        ax.set_ylabel(title)
        ax.set_title(f"{title} vs time")
    if data.blq.any():
        axes[0, 0].legend(loc="upper left", fontsize=8)
    save(fig, path)


def plot_vpc(result, bins, path):
    """vpc.png: one row per observation name (a second panel with the fraction
    censored when the name has censored rows)."""
    plt = pyplot()
    log_time, log_values = _log_scales(result)
    data = result.observations.data
    columns = 2 if any(b.censored_observed is not None for b in bins) else 1
    fig, axes = plt.subplots(len(bins), columns, figsize=(7 * columns, 4.5 * len(bins)),
                             squeeze=False)
    colours = ("tab:blue", "tab:red", "tab:blue")
    for row, b in enumerate(bins):
        ax = axes[row, 0]
        rows = (data.name == b.name) & ~data.blq
        ax.scatter(data.time[rows], data.value[rows], s=6, alpha=0.25, color="grey",
                   label="observations")
        for k, (pct, colour) in enumerate(zip(PERCENTILES, colours)):
            ax.fill_between(b.times, b.band[k, :, 0], b.band[k, :, 1], color=colour,
                            alpha=0.2, lw=0)
            ax.plot(b.times, b.median[k], color=colour, lw=1, ls="--")
            ax.plot(b.times, b.observed[k], color=colour, lw=2, marker="o", ms=3,
                    label=f"observed {pct:g}th percentile")
        if log_time:
            ax.set_xscale("log")
        if log_values:
            ax.set_yscale("log")
        ax.set_xlabel("time (days)")
        ax.set_ylabel(b.name)
        ax.set_title(f"VPC, {b.name}: observed 5/50/95th percentiles (lines), "
                     f"90% ranges of the simulated ones (bands)", fontsize=9)
        ax.legend(fontsize=7, loc="best")
        if columns == 2:
            ax = axes[row, 1]
            if b.censored_observed is not None:
                ax.fill_between(b.times, b.censored_band[:, 0], b.censored_band[:, 1],
                                color="tab:red", alpha=0.2, lw=0, label="simulated 90% range")
                ax.plot(b.times, b.censored_observed, color="tab:red", marker="o",
                        label="observed")
                ax.set_ylim(0, 1)
                ax.legend(fontsize=7)
            if log_time:
                ax.set_xscale("log")
            ax.set_xlabel("time (days)")
            ax.set_ylabel("fraction below the limit")
    save(fig, path)


def plot_convergence(result, path):
    """convergence.png: SAEM trajectories of every estimate, the end of the
    exploratory phase (K1) marked."""
    plt = pyplot()
    labels = list(result.history)
    columns = 4
    rows = -(-len(labels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    for ax, label in zip(axes.ravel(), labels):
        values = result.history[label]
        if label in result.typical:
            values = np.exp(values)
        ax.plot(np.arange(1, values.size + 1), values, lw=1)
        ax.axvline(result.settings.k1, color="grey", lw=0.8, ls="--")
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(labels):]:
        ax.axis("off")
    fig.suptitle("SAEM iterations (dashed: end of the exploratory phase)", fontsize=10)
    save(fig, path)
