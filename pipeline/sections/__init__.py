"""Report sections that appear when a run has what they need.

Each section module has ``section(patients, scenario, out_dir)`` returning a
:class:`Section` (a title, Markdown text that links its plots, and {file key:
path} of the files it wrote into ``out_dir``), or None when the run lacks its
columns or settings. ``patients`` is the run's DataFrame (one row per patient
and arm), ``scenario`` its validated :class:`pipeline.config.Scenario` (None
when the run's config cannot be read). Sections only read columns the shard
wrote and aggregate with :mod:`pipeline.aggregate`; they compute no model.
"""
from collections import namedtuple

from pipeline.sections import efficacy, interventions, risk
from pipeline.sections import antigen
from pipeline.sections import waterfall
from pipeline.sections import costim
from pipeline.sections import debulking

Section = namedtuple("Section", "title markdown files")

SECTIONS = (efficacy.section, interventions.section, risk.section, antigen.section, waterfall.section, costim.section, debulking.section,)


def write_sections(patients, scenario, out_dir):
    """Every section that applies to this run, in :data:`SECTIONS` order."""
    found = (make(patients, scenario, out_dir) for make in SECTIONS)
    return [s for s in found if s is not None]
