"""Estimation: fitting models to longitudinal clinical data (DESIGN.md section 4).

:mod:`~pipeline.estimate.data` reads and validates long-format data files;
:mod:`~pipeline.estimate.residuals` holds the residual error models;
:mod:`~pipeline.estimate.structural` turns parameters into predictions through
closed forms or the batched kernel; :mod:`~pipeline.estimate.individual` fits
every individual at once by Levenberg-Marquardt; :mod:`~pipeline.estimate.simulate`
builds virtual clinical datasets.
"""
