"""The dual-antigen report section names the antigens as the scenario does
(issue 13): configs/gbm_egfrviii.toml's mono-specific arm ``egfrviii_mono``
(parameter set mono_A) names antigen A "EGFRvIII", spelled as in the
scenario's description; no arm names its second target, which keeps "B";
configs/logic_gates.toml's arms name none (``mono_A``), so A and B stay.
Checked in the markdown tables, in antigen_damage.csv and in the plots'
titles, axis labels and legends (the figures as the section saves them)."""
import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import Arm, load_scenario, with_overrides
from pipeline.sections import antigen

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _patients(scenario):
    from pipeline.shard import run_shard
    tables = run_shard(scenario, 0)
    return pd.concat([t.to_pandas().assign(arm=arm) for arm, (t, _) in tables.items()],
                     ignore_index=True)


@pytest.fixture(scope="module")
def gbm():
    scenario = with_overrides(load_scenario(CONFIGS / "gbm_egfrviii.toml"), patients=200,
                              shard_size=200)
    return scenario, _patients(scenario)


def _figure_texts(monkeypatch):
    """Every text of every figure the section saves: {file name: [text, ...]}."""
    texts, real = {}, antigen.save

    def capture(fig, path):
        found = [t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text"))]
        texts[Path(path).name] = [t for t in found if t]
        real(fig, path)
    monkeypatch.setattr(antigen, "save", capture)
    return texts


def test_antigen_names_from_the_scenarios_arms():
    assert antigen.antigen_names(load_scenario(CONFIGS / "gbm_egfrviii.toml")) == {
        "A": "EGFRvIII", "B": "B"}
    assert antigen.antigen_names(load_scenario(CONFIGS / "logic_gates.toml")) == {
        "A": "A", "B": "B"}
    assert antigen.antigen_names(None) == {"A": "A", "B": "B"}
    # a mono-B arm names B; names without a spelling in the description as written
    logic = load_scenario(CONFIGS / "logic_gates.toml")
    arms = (*logic.arms, Arm("il13ra2_mono", "fixed", dose_cells=1e8, parameter_set="mono_B"))
    assert antigen.antigen_names(dataclasses.replace(logic, arms=arms)) == {
        "A": "A", "B": "il13ra2"}
    # two arms naming one antigen differently: the letter
    arms = (*logic.arms, Arm("cd19_mono", "fixed", dose_cells=1e8, parameter_set="mono_A"),
            Arm("cd22_mono", "fixed", dose_cells=1e8, parameter_set="mono_A"))
    assert antigen.antigen_names(dataclasses.replace(logic, arms=arms))["A"] == "A"


def test_gbm_section_tables_and_plots_use_the_antigen_names(gbm, tmp_path, monkeypatch):
    scenario, patients = gbm
    texts = _figure_texts(monkeypatch)
    result = antigen.section(patients, scenario, tmp_path)
    md = result.markdown
    assert "| EGFRvIII+ B+ | EGFRvIII+ B- | EGFRvIII- B+ | EGFRvIII- B- |" in md
    assert "only EGFRvIII or only B" in md and "EGFRvIII-negative fraction" in md
    assert "| egfrviii_mono | EGFRvIII |" in md and "| bispecific_or | B |" in md
    assert "A+B+" not in md and "| A |" not in md
    damage = pd.read_csv(result.files["antigen_damage"])
    assert list(damage["tissue"].unique()) == ["A", "B"]           # the model's keys kept
    assert list(damage["antigen"].unique()) == ["EGFRvIII", "B"]
    assert "EGFRvIII+ B-" in texts["antigen_escape.png"]
    assert "A+B-" not in texts["antigen_escape.png"]
    assert "Normal tissue expressing only EGFRvIII" in texts["antigen_damage.png"]
    assert "largest loss of normal tissue EGFRvIII (% of baseline)" in texts["antigen_damage.png"]
    by_fraction = texts["antigen_by_fraction.png"]
    assert "escape by EGFRvIII heterogeneity" in by_fraction
    assert any(t.startswith("EGFRvIII-negative fraction at infusion") for t in by_fraction)
    assert not any("antigen-A" in t or t.startswith("A-negative") for t in by_fraction)


def test_logic_gates_section_keeps_the_letters(tmp_path, monkeypatch):
    scenario = with_overrides(load_scenario(CONFIGS / "logic_gates.toml"), patients=100,
                              shard_size=100)
    texts = _figure_texts(monkeypatch)
    md = antigen.section(_patients(scenario), scenario, tmp_path).markdown
    assert "| A+B+ | A+B- | A-B+ | A-B- |" in md and "only A or only B" in md
    assert "Normal tissue expressing only A" in texts["antigen_damage.png"]
    assert "escape by antigen-A heterogeneity" in texts["antigen_by_fraction.png"]
