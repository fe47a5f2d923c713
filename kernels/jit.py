"""The one place that says how kernels are compiled.

* no ``cache``: helpers are compiled into the one kernel that calls them, and
  only that kernel is cached on disk, under a key that covers every source file
  (:mod:`kernels.cache`). Model right-hand sides are cached on their own.
* ``error_model="numpy"``: division by zero gives inf/nan instead of raising;
  without it every division carries a zero check and nothing vectorises.
* no ``fastmath``: results stay IEEE-exact, so a patient's numbers are the same
  bit for bit whether its lane runs in a vector or a scalar instruction, alone or
  in a batch, on one thread or many.
* a lane-wise choice between two stored values is written as a conditional
  store (``if accepted[l]: y[s, l] = y_new[s, l]``), not as
  ``y[s, l] = y_new[s, l] if accepted[l] else y[s, l]``: LLVM turns the second
  into a load through a selected address, which it will not vectorise
  ("unsafe indirect dependence"); the first becomes a masked store. Measured
  on the step's commit and the feature trackers' updates.
* ``_nrt=False``: no reference counting. A lock-step block is a tuple of ~50
  arrays; with reference counting, every pass over it paid about a hundred
  atomic increments and decrements (measured: the feature pass ran 15x slower).
  Compiled kernels therefore never allocate; the few that must (block
  allocation, the parallel driver) ask for ``allocates=True``.
"""


def jit_options(allocates=False, **extra):
    """Keyword arguments for ``numba.njit`` shared by every kernel."""
    options = {"error_model": "numpy", "nogil": True, "_nrt": allocates}
    options.update(extra)
    return options
