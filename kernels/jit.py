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
* LLVM's memory-check budget raised (:data:`MEMORY_CHECKS`): a loop over lanes
  that stores to some rows and reads others is vectorised behind a run-time
  check that no stored row overlaps a read one, one check per pair. LLVM gives
  up past 8 checks (128 under a pragma), and a model's right-hand side reads
  and writes ~40 rows (cart2: 6 stored, 6 + 25 + 1 read: 200 checks, once per
  call for a whole block of lanes, against a scalar loop over them; measured
  with ``-pass-remarks-missed=loop-vectorize``: "too many memory checks").
  The options are process-wide and change only which loops vectorise, never a
  result (no fastmath).
"""
import llvmlite.binding as llvm

MEMORY_CHECKS = 1024
llvm.set_option("", f"-runtime-memory-check-threshold={MEMORY_CHECKS}")
llvm.set_option("", f"-vectorize-memory-check-threshold={MEMORY_CHECKS}")


def jit_options(allocates=False, **extra):
    """Keyword arguments for ``numba.njit`` shared by every kernel."""
    options = {"error_model": "numpy", "nogil": True, "_nrt": allocates}
    options.update(extra)
    return options
