"""Does the policy beat the reference? Each arm against the reference arm on
the lead response and on severe CRS, in words.

The report (:mod:`pipeline.report`) opens with these lines and ``cartcohort
run`` and ``cartcohort report`` print them. A difference is the arm's rate
minus the reference's on the same patients, a fraction, with its exact paired
95% interval (:func:`pipeline.aggregate.paired_differences`); it is
*significant* when its interval excludes 0. The verdict goes by the directions
of the two differences (more response is better, more severe CRS is worse) and
says which intervals exclude 0:

* better on both: higher response and fewer severe CRS;
* worse on both: lower response and more severe CRS, flagged ("FLAG: worse
  than ... on both");
* a trade-off: one better and the other worse, e.g. "fewer severe CRS at a cost
  in response";
* no significant difference: neither interval excludes 0, whatever the
  directions of the point estimates.
"""
import math

from pipeline.tables import percent

SEVERE = "severe_crs"
RESPONSE_WORDS = {1: "higher response", 0: "response unchanged", -1: "lower response"}
SEVERE_WORDS = {1: "fewer severe CRS", 0: "severe CRS unchanged", -1: "more severe CRS"}
# the flag before the verdict of an arm worse than the reference on both
WORSE_FLAG = "FLAG: "


def significant(d):
    """Whether the interval of difference ``d`` (``lower``, ``upper``) excludes 0."""
    return d.lower > 0 or d.upper < 0


def _sign(value):
    return int(value > 0) - int(value < 0)


def _points(name, d):
    """'response -1.10 points [-1.40, -0.80]': ``d`` in fractions, shown in points."""
    return (f"{name} {percent(d.difference, 2, True)} points "
            f"[{percent(d.lower, 2, True)}, {percent(d.upper, 2, True)}]")


def _which_exclude_zero(response, severe):
    """Which intervals exclude 0, given whether each does (at least one)."""
    if response and severe:
        return "both intervals exclude 0"
    first, second = ("response", "severe CRS") if response else ("severe CRS", "response")
    return f"the {first} interval excludes 0, the {second} one includes 0"


def _judgement(reference, response, severe):
    """The words after the numbers (see the module docstring)."""
    if not (math.isfinite(response.difference) and math.isfinite(severe.difference)):
        return "no comparison (no patient ok in both arms)"
    if not (significant(response) or significant(severe)):
        return f"no significant difference from {reference} (both intervals include 0)"
    gain_response, gain_severe = _sign(response.difference), -_sign(severe.difference)
    words = RESPONSE_WORDS[gain_response], SEVERE_WORDS[gain_severe]
    if gain_response == gain_severe:
        summary = (f"{'better' if gain_response > 0 else WORSE_FLAG + 'worse'} than "
                   f"{reference} on both: {words[0]} and {words[1]}")
    elif gain_response * gain_severe < 0:
        summary = (f"{words[0]} at a cost in severe CRS" if gain_response > 0
                   else f"{words[1]} at a cost in response")
    else:                                    # one difference is exactly 0
        summary = ", ".join(words if gain_response else words[::-1])
    return f"{summary} ({_which_exclude_zero(significant(response), significant(severe))})"


def verdict(arm, reference, response, severe):
    """One arm's verdict against ``reference`` as one line, e.g. "adaptive:
    response -1.10 points [-1.40, -0.80], severe CRS -2.70 points [-2.90,
    -2.50]: fewer severe CRS at a cost in response (both intervals exclude 0)".

    ``response``, ``severe``: the paired differences (attributes ``difference``,
    ``lower``, ``upper``, fractions) of the lead response and of severe CRS."""
    return (f"{arm}: {_points('response', response)}, {_points('severe CRS', severe)}: "
            f"{_judgement(reference, response, severe)}")


def verdict_lines(paired, lead):
    """:func:`verdict` of every arm of ``paired`` (the
    :func:`~pipeline.aggregate.paired_differences` frame), in its order, on the
    ``lead`` response column and severe CRS."""
    rows = {(row.arm, row.outcome): row for row in paired.itertuples(index=False)}
    arms = dict.fromkeys(paired["arm"])
    return [verdict(arm, rows[(arm, lead)].reference, rows[(arm, lead)], rows[(arm, SEVERE)])
            for arm in arms]


def question(reference, lead_label):
    """The sentence that introduces the verdict lines; ``lead_label`` words the
    lead response, e.g. "response (no detectable disease at day 90)"."""
    return (f"Does the policy beat the reference? Each arm minus {reference} on the same "
            f"patients (ok in both arms), percentage points [exact 95% interval], on the "
            f"lead {lead_label} and on severe CRS:")
