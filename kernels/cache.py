"""Disk-cached compilation of the integrator that cannot go stale.

Numba's disk cache checks only the timestamp of the file that defines the
compiled function. The integrator is one function assembled from every module
of this package (stages, controller, features, lanes...), so an edit to any of
them would silently reuse stale machine code. Here the compiled function is
built by a template whose closure variable holds a hash of every source file
it is built from (:func:`_integrator_sources`); Numba hashes closure variables
into its cache key, so any edit compiles anew and an unchanged tree loads in
milliseconds.

Only the top-level kernel is cached: the functions it calls are compiled as part
of it (``cache=False`` in :func:`kernels.jit.jit_options`).
"""
import functools
import hashlib
import pathlib

import numba as nb

_KERNELS_DIR = pathlib.Path(__file__).resolve().parent


def _integrator_sources():
    """Every source the integrator is built from: the package's modules and the
    model interface (``models/base.py``), but not the models themselves, whose
    right-hand sides reach the kernel as run-time arguments (adding or editing
    a model does not recompile the integrator)."""
    return sorted([*_KERNELS_DIR.glob("*.py"), _KERNELS_DIR / "models" / "base.py"])


@functools.cache
def source_key():
    """A 60-bit integer hash of the integrator's sources (an integer, since a
    string constant would stop Numba caching the kernel)."""
    digest = hashlib.sha256()
    for path in _integrator_sources():
        digest.update(path.relative_to(_KERNELS_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return int(digest.hexdigest()[:15], 16)


def compile_cached(template, signature, **options):
    """Compile ``template(source_key())`` eagerly for ``signature``, cached on disk."""
    return nb.njit(signature, cache=True, **options)(template(source_key()))
