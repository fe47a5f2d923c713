"""Plain-text tables for the terminal, and the percentages in them."""
import math


def text_table(headers, rows):
    """Left-aligned columns under a dashed rule."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def percent(value, digits=1, sign=False):
    """A fraction as a percentage with ``digits`` decimals, "+" on positive
    values when ``sign`` (never "-0.0"; "n/a" for None and NaN)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    shown = round(100.0 * value, digits) + 0.0        # + 0.0 turns -0.0 into 0.0
    return f"{shown:{'+' if sign else ''}.{digits}f}"
