"""cartcohort's numerical core: numpy and numba only.

``kernels`` knows nothing of pandas, Dask, files or configuration. It holds the
batched Dormand-Prince 5(4) integrator (:mod:`kernels.dopri5`), the in-loop
features it computes (:mod:`kernels.features`) and the model library
(:mod:`kernels.models`).
"""
