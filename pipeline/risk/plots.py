"""Plots of the risk model on the test cohort: score by observed grade, ROC
curves, calibration by decile and the decision curve."""
import numpy as np

from pipeline.figures import colours, pyplot, save
from pipeline.risk.calibration import roc_curve
from pipeline.risk.utility import TREAT_ALL, TREAT_NONE

MAX_STRIP_POINTS = 4000
SCORE_LABELS = {"R_linear": "score R on linear features", "R_log": "score R on log10 features"}
REFERENCE_COLOURS = {TREAT_ALL: "grey", TREAT_NONE: "black"}
PROBABILITY_LABELS = {"p_score": "p from the score (logistic calibration)",
                      "p_early": "p from IL-6 and CAR T on days 1-3"}


def score_by_grade(scored, path, seed=0):
    """Box plot (and a strip of up to MAX_STRIP_POINTS patients) of each score by
    observed grade."""
    plt = pyplot()
    columns = [c for c in SCORE_LABELS if c in scored.columns]
    fig, axes = plt.subplots(1, len(columns), figsize=(5.2 * len(columns), 4.2), squeeze=False)
    grades = np.arange(scored["grade"].max() + 1)
    rng = np.random.default_rng(seed)
    strip = scored.iloc[rng.permutation(len(scored))[:MAX_STRIP_POINTS]]
    for ax, column in zip(axes[0], columns, strict=True):
        data = [scored.loc[scored["grade"] == g, column].to_numpy() for g in grades]
        ax.boxplot(data, positions=grades, widths=0.5, showfliers=False)
        jitter = rng.uniform(-0.2, 0.2, len(strip))
        ax.scatter(strip["grade"] + jitter, strip[column], s=3, alpha=0.25, color="tab:blue")
        ax.plot(grades, grades, color="grey", linestyle="--", linewidth=1, label="R = grade")
        ax.set_xlabel("observed CRS grade (grading model)")
        ax.set_ylabel(SCORE_LABELS[column])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Risk score by observed grade, test cohort (n {len(scored):,})")
    save(fig, path)


def roc(scored, metrics, path):
    """ROC curves of the scores and of p_early, AUC [95% CI] in the legend."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    curves = {**{c: metrics["scores"][c[2:]] for c in SCORE_LABELS if c in scored},
              "p_early": metrics["probabilities"]["early"]}
    colour = colours(list(curves))
    for column, m in curves.items():
        fpr, tpr = roc_curve(scored[column], scored["severe"])
        label = SCORE_LABELS.get(column) or PROBABILITY_LABELS[column]
        ax.plot(fpr, tpr, color=colour[column],
                label=f"{label}: AUC {m['auc']:.3f} [{m['auc_lower']:.3f}, {m['auc_upper']:.3f}]")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title("Severe CRS (grade >= 3), test cohort")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    save(fig, path)


def calibration(tables, path):
    """Observed rate (Wilson 95% CI) against mean predicted p per decile."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    names = list(dict.fromkeys(tables["probability"]))
    colour = colours(names)
    for name in names:
        t = tables[tables["probability"] == name]
        ax.errorbar(t["predicted"], t["observed"],
                    yerr=[t["observed"] - t["lower"], t["upper"] - t["observed"]],
                    marker="o", capsize=3, color=colour[name], label=PROBABILITY_LABELS[name])
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    ax.set_xlabel("mean predicted p (decile of p)")
    ax.set_ylabel("observed severe CRS rate (Wilson 95% CI)")
    ax.set_title("Calibration, test cohort")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    save(fig, path)


def decision_curve(curve, tau, path):
    """Net benefit against the threshold probability, tau marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    names = [c for c in curve.columns if c != "threshold"]
    colour = {**colours([n for n in names if n not in REFERENCE_COLOURS]), **REFERENCE_COLOURS}
    for name in names:
        style = {"linestyle": ":"} if name in REFERENCE_COLOURS else {}
        ax.plot(curve["threshold"], curve[name], color=colour[name],
                label=PROBABILITY_LABELS.get(name, name), **style)
    ax.axvline(tau, color="black", linestyle="--", linewidth=1, label=f"tau = {tau:.3g}")
    top = float(curve[names].to_numpy().max())
    ax.set_ylim(-0.25 * top, 1.1 * top)
    ax.set_xlabel("threshold probability pt")
    ax.set_ylabel("net benefit (true positives per patient)")
    ax.set_title("Decision curve, test cohort")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, path)
