"""The model documentation says what the code does: docs/model-cart2.md's
parameter table has every cart2 parameter with the model's unit, typical value,
spread and source, and the calibration's output shipped in docs/ holds the
typical values the model uses."""
import re
from pathlib import Path

import pytest

from kernels.models import get_model

try:
    import tomllib
except ModuleNotFoundError:           # Python 3.10
    import tomli as tomllib

DOCS = Path(__file__).resolve().parent.parent / "docs"


def parameter_rows(text):
    """{name: [unit, typical, sd, meaning, source]} of the doc's parameter table."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"\| `(\w+)` \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split(" | ")]
    return rows


def test_cart2_parameter_table_matches_the_model():
    rows = parameter_rows((DOCS / "model-cart2.md").read_text(encoding="utf-8"))
    model = get_model("cart2")
    assert list(rows) == list(model.parameter_names)
    for p in model.parameters:
        unit, typical, sd, meaning, source = rows[p.name]
        assert unit == p.unit and meaning == p.description and source == p.source, p.name
        assert float(typical) == pytest.approx(p.typical, rel=1e-5), p.name
        assert float(sd) == p.sd_log, p.name


def test_cart2_typical_values_are_the_shipped_calibration():
    """kernels/models/cart2.py's fitted values equal fitted.toml of the shipped
    `cartcohort calibrate configs/targets_dlbcl.toml` run (6 digits)."""
    fitted = tomllib.loads((DOCS / "calibration" / "cart2_dlbcl" / "fitted.toml")
                           .read_text(encoding="utf-8"))["cohort"]["parameters"]
    model = get_model("cart2")
    typical = dict(zip(model.parameter_names, model.typical_parameters()))
    assert len(fitted) >= 5
    for name, table in fitted.items():
        assert typical[name] == pytest.approx(table["typical"], rel=1e-5), name
        assert "calibrated" in model.parameters[model.parameter_index(name)].source
