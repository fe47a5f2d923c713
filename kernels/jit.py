"""The one place that says how kernels are compiled.

* ``cache=True``: compiled code is written next to the sources (or under
  ``NUMBA_CACHE_DIR``), so a second process, or a Dask worker on the same node,
  reaches its first result without recompiling.
* ``error_model="numpy"``: division by zero gives inf/nan instead of raising;
  without it every division carries a zero check and nothing vectorises.
* no ``fastmath``: results stay IEEE-exact, so a patient's numbers are the same
  bit for bit whether its lane runs in a vector or a scalar instruction, alone or
  in a batch, on one thread or many.
"""


def jit_options(**extra):
    """Keyword arguments for ``numba.njit`` shared by every kernel."""
    options = {"cache": True, "error_model": "numpy", "nogil": True}
    options.update(extra)
    return options
