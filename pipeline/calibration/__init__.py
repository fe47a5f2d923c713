"""Calibrations: fits of model parameters to published targets.

``cartcohort calibrate TARGETS.toml --out DIR``: typical values of any scenario
model fitted to published summary statistics on a fixed virtual cohort
(:mod:`~pipeline.calibration.targets` the file, :mod:`~pipeline.calibration.objective`
the statistics and residuals, :mod:`~pipeline.calibration.fit` the optimiser and
identifiability, :mod:`~pipeline.calibration.output` the files). ``cart2``'s
typical values are its output for ``configs/targets_dlbcl.toml``.

``costim_fit``: the ``costim`` model's CD28 and 4-1BB construct parameter sets
(``python -m pipeline.calibration.costim_fit`` prints them again).
"""
