"""Calibrations: fits of model parameters to published targets, whose results
are stored as data in the model modules (``python -m pipeline.calibration.<fit>``
prints them again).

``costim_fit``: the ``costim`` model's CD28 and 4-1BB construct parameter sets.
"""
