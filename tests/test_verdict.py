"""The verdict in words (pipeline.verdict) on hand-made paired differences:
better on both, worse on both, the two trade-offs, no significant difference,
and the qualifiers saying which intervals exclude 0."""
import math

import pandas as pd

from pipeline.aggregate import PairedDifference
from pipeline.verdict import question, significant, verdict, verdict_lines


def d(difference, lower, upper):
    """A paired difference in percentage points (stored as fractions)."""
    return PairedDifference(1000, 0, 0, difference / 100, lower / 100, upper / 100)


def words(line):
    """The judgement after the numbers."""
    return line.split("]: ", 1)[1]


def test_better_on_both():
    line = verdict("oracle", "fixed", d(2.0, 1.0, 3.0), d(-3.0, -4.0, -2.0))
    assert line == ("oracle: response +2.00 points [+1.00, +3.00], severe CRS -3.00 points "
                    "[-4.00, -2.00]: better than fixed on both: higher response and fewer "
                    "severe CRS (both intervals exclude 0)")


def test_worse_on_both_says_which_intervals_exclude_zero():
    both = verdict("a", "fixed", d(-2.0, -3.0, -1.0), d(1.5, 0.5, 2.5))
    assert words(both) == ("FLAG: worse than fixed on both: lower response and more severe CRS "
                           "(both intervals exclude 0)")
    response_only = verdict("a", "fixed", d(-2.0, -3.0, -1.0), d(0.4, -0.2, 1.0))
    assert words(response_only) == (
        "FLAG: worse than fixed on both: lower response and more severe CRS (the response "
        "interval excludes 0, the severe CRS one includes 0)")
    severe_only = verdict("a", "fixed", d(-0.5, -1.2, 0.2), d(1.5, 0.5, 2.5))
    assert words(severe_only).endswith(
        "(the severe CRS interval excludes 0, the response one includes 0)")


def test_trade_offs():
    fewer_severe = verdict("adaptive", "fixed", d(-1.1, -1.4, -0.8), d(-2.7, -2.9, -2.5))
    assert fewer_severe == (
        "adaptive: response -1.10 points [-1.40, -0.80], severe CRS -2.70 points [-2.90, "
        "-2.50]: fewer severe CRS at a cost in response (both intervals exclude 0)")
    more_response = verdict("a", "fixed", d(3.0, 2.0, 4.0), d(1.0, 0.2, 1.8))
    assert words(more_response) == ("higher response at a cost in severe CRS "
                                    "(both intervals exclude 0)")


def test_no_significant_difference_whatever_the_directions():
    for response, severe in ((d(-0.3, -1.0, 0.4), d(0.2, -0.5, 0.9)),     # worse on both
                             (d(0.3, -0.4, 1.0), d(-0.2, -0.9, 0.5)),     # better on both
                             (d(0.0, 0.0, 0.0), d(0.0, 0.0, 0.0))):       # identical arms
        assert words(verdict("a", "fixed", response, severe)) == (
            "no significant difference from fixed (both intervals include 0)")


def test_an_unchanged_outcome_and_no_patients():
    unchanged = verdict("a", "fixed", d(0.0, -0.5, 0.5), d(-2.0, -3.0, -1.0))
    assert words(unchanged) == ("fewer severe CRS, response unchanged (the severe CRS "
                                "interval excludes 0, the response one includes 0)")
    nan = PairedDifference(0, 0, 0, math.nan, math.nan, math.nan)
    line = verdict("a", "fixed", nan, nan)
    assert line == ("a: response n/a points [n/a, n/a], severe CRS n/a points [n/a, n/a]: "
                    "no comparison (no patient ok in both arms)")


def test_significant_means_the_interval_excludes_zero():
    assert significant(d(1.0, 0.1, 2.0)) and significant(d(-1.0, -2.0, -0.1))
    assert not significant(d(1.0, 0.0, 2.0)) and not significant(d(-1.0, -2.0, 0.5))


def test_verdict_lines_read_the_paired_table():
    """One line per arm in the table's order, on the lead column and severe CRS
    (the other response definition and relapse are not judged)."""
    rows = []
    for arm, values in (("b", {"no_detectable_disease": (3.0, 2.0, 4.0),
                               "responded": (-5.0, -6.0, -4.0),
                               "severe_crs": (-1.0, -2.0, -0.5), "relapsed": (9.0, 8.0, 10.0)}),
                        ("a", {"no_detectable_disease": (-1.0, -2.0, -0.5),
                               "responded": (4.0, 3.0, 5.0),
                               "severe_crs": (1.0, 0.5, 2.0), "relapsed": (0.0, -1.0, 1.0)})):
        for outcome, (diff, lower, upper) in values.items():
            rows.append({"arm": arm, "reference": "ref", "outcome": outcome, "n": 100,
                         "arm_only": 0, "reference_only": 0, "difference": diff / 100,
                         "lower": lower / 100, "upper": upper / 100})
    paired = pd.DataFrame(rows)
    lines = verdict_lines(paired, "no_detectable_disease")
    assert [line.split(":")[0] for line in lines] == ["b", "a"]
    assert "better than ref on both" in lines[0] and "worse than ref on both" in lines[1]
    by_relative = verdict_lines(paired, "responded")
    assert "fewer severe CRS at a cost in response" in by_relative[0]
    assert "higher response at a cost in severe CRS" in by_relative[1]


def test_question_names_the_reference_and_the_lead():
    label = "response (no detectable disease at day 90)"
    text = question("fixed", label)
    assert text.startswith("Does the policy beat the reference?")
    assert "minus fixed" in text and f"lead {label}" in text
