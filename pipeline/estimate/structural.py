"""Structural models for fitting: parameters -> predictions at a dataset's observations.

A :class:`StructuralModel` predicts every observation row of a
:class:`~pipeline.estimate.data.Dataset` from one parameter vector per
individual (natural, positive scale). :meth:`StructuralModel.predict_many`
evaluates K parameter sets per individual at once; for ODE models that is ONE
call of the batched kernel (:func:`kernels.dopri5.solve`) with K x N lanes,
saving the states at the union of the observation times, with the doses of
the data. Estimation (finite-difference Jacobians, SAEM proposals) batches
through it.

Models (:func:`get_structural`):

``stein``
    Stein et al. 2019's closed form (:func:`kernels.models.kinetics.closed_form`),
    parameters foldx, Tmax, Cmax, alpha, FB, beta; observation ``cart`` in
    copies/ug. Doses are not used (the model starts at Cmax / foldx).
``stein_ode``
    the same model as an ODE (:mod:`kernels.models.kinetics`) through the kernel.
any kernel model with CAR T, tumour or IL-6 roles (``cart``, ``costim``, ...)
    ``free`` names the fitted parameters; the others stay at the model's
    typical values (or ``fixed={name: value}``). Observations: ``tumour`` and
    ``cart`` in cells (the sums of the model's ``tumour`` and ``car_t``
    states times ``cells_per_unit``), ``il6`` in pg/mL. Doses (cells) from the
    data enter the model's ``infusion`` state; the baseline tumour is the
    covariate ``tumour_burden_cells`` when the data have it, else the model's
    typical initial state.
"""
import numpy as np

from kernels import dopri5
from kernels.models import MODELS, get_model, kinetics
from kernels.status import OK
from pipeline.estimate.data import require_names

# observation name -> (model role, counts cells)
OBSERVATION_ROLES = {"tumour": ("tumour", True), "cart": ("car_t", True), "il6": ("il6", False)}
# default fitted parameters of kernel models, identifiable from tumour, CAR T and
# IL-6 time courses sampled every few days: tumour growth and kill, CAR T expansion
# and effector loss, IL-6 release. Not IL-6 clearance: with c = 2 /day (the cart
# model's, docs/models.md#cart; a half-life of 0.35 d) IL-6 is at its
# quasi-steady state s kill / c at such sampling, which fixes only s / c, and a
# c drifting up makes the IL-6 equation stiff.
# costim: its construct parameters, the ones pipeline.calibration.costim_fit fits
# per construct to CAR T kinetics (kernels/models/costim.py).
DEFAULT_FREE = {"cart": ("r", "k", "a", "dE", "s"),
                "costim": ("alpha", "delta", "mu", "dM")}
FIT_ONLY_MODELS = ("kinetics",)   # reached as "stein_ode"
# FB is the fraction of the peak in the persisting phase: FB >= 1 would make the
# contraction phase negative (Stein et al. 2019's model, kernels/models/kinetics.py)
STEIN_UPPER = {"FB": 1.0}
# starts of kernel-model fits, in between-patient sds of the log from the typical values
KERNEL_STARTS_SD = (0.0, 1.0, -1.0)


class StructuralModel:
    """Predictions of a model at the observation rows of a dataset.

    ``name``; ``parameter_names`` (tuple, the columns of theta); ``typical``
    {name: typical value}; ``sd_log`` {name: between-patient sd of the log};
    ``observations`` (tuple of the observation names it predicts);
    ``fd_step``: the forward-difference step on the log scale that suits the
    accuracy of its predictions; ``upper`` {name: bound}: parameters whose
    values must stay below a bound (a fraction below 1): an individual beyond
    it is predicted NaN, which estimation treats as an invalid point.
    Subclasses implement ``_predict_many``.
    """

    fd_step = 1e-7

    def __init__(self, name, parameter_names, typical, sd_log, observations, upper=None):
        self.name = name
        self.parameter_names = tuple(parameter_names)
        self.typical = dict(typical)
        self.sd_log = dict(sd_log)
        self.observations = tuple(observations)
        self.upper = dict(upper or {})

    @property
    def n_parameters(self):
        return len(self.parameter_names)

    def typical_vector(self):
        """float64[P], typical values in parameter_names order."""
        return np.array([self.typical[n] for n in self.parameter_names], dtype=np.float64)

    def initial_estimates(self, data):
        """float64[S, N, P]: S starting values per individual for individual
        fits (the fit keeps the best); here S = 1, the typical values."""
        return np.repeat(self.typical_vector()[None, None, :], data.n_individuals, axis=1)

    def check(self, data):
        """DataError at the first observation the model does not predict."""
        require_names(data, self.observations, self.name)

    def predict(self, theta, data):
        """float64[M] predictions at data's observations; theta float64[N, P]."""
        return self.predict_many(np.asarray(theta, dtype=np.float64)[None], data)[0]

    def predict_many(self, theta, data):
        """float64[K, M] for theta float64[K, N, P]: K parameter sets per
        individual, all evaluated in one batch; NaN where a solve failed or a
        parameter is beyond its ``upper`` bound."""
        theta = np.asarray(theta, dtype=np.float64)
        expected = (data.n_individuals, self.n_parameters)
        if theta.ndim != 3 or theta.shape[1:] != expected:
            raise ValueError(f"{self.name}: theta has shape {theta.shape}; expected "
                             f"(K, {expected[0]}, {expected[1]})")
        predicted = self._predict_many(theta, data)
        invalid = np.zeros(theta.shape[:2], bool)
        for name, bound in self.upper.items():
            invalid |= ~(theta[:, :, self.parameter_names.index(name)] < bound)
        return np.where(invalid[:, data.individual], np.nan, predicted)

    def _predict_many(self, theta, data):
        raise NotImplementedError


def stein_initial_estimates(model, data):
    """Three starts per individual (non-compartmental): typical values with
    Cmax at the highest quantified observation and Tmax at its time t*, or
    half-way to the sampling time before or after t*. The closed form has a
    kink wherever Tmax equals a sampling time, so the objective can have a
    local minimum between each pair of sampling times near the peak."""
    theta = np.repeat(StructuralModel.initial_estimates(model, data), 3, axis=0)
    names = model.parameter_names
    value = np.where(data.blq, -np.inf, data.value)
    order = np.lexsort((-value, data.individual))
    peak = order[data.starts[:-1]]                  # each individual's highest value
    usable = np.isfinite(value[peak]) & (value[peak] > 0) & (data.time[peak] > 0)
    first, last = data.starts[:-1], data.starts[1:] - 1
    before = np.where(peak > first, data.time[np.maximum(peak - 1, 0)], 0.0)
    after = np.where(peak < last, data.time[np.minimum(peak + 1, data.n_observations - 1)],
                     data.time[peak])
    t_peak = data.time[peak]
    for s, tmax in enumerate((t_peak, (before + t_peak) / 2, (t_peak + after) / 2)):
        theta[s, usable, names.index("Tmax")] = tmax[usable]
        theta[s, usable, names.index("Cmax")] = value[peak][usable]
    return theta


class SteinClosedForm(StructuralModel):
    """Stein 2019's closed form (``stein``)."""

    def __init__(self):
        super().__init__("stein", [p.name for p in kinetics.PARAMETERS],
                         {p.name: p.typical for p in kinetics.PARAMETERS},
                         {p.name: p.sd_log for p in kinetics.PARAMETERS}, ("cart",),
                         upper=STEIN_UPPER)

    initial_estimates = stein_initial_estimates

    def _predict_many(self, theta, data):
        rows = theta[:, data.individual, :]                    # [K, M, P]
        with np.errstate(all="ignore"):
            return kinetics.closed_form(data.time[None, :], *np.moveaxis(rows, 2, 0))


class KernelModel(StructuralModel):
    """A kernel model (:mod:`kernels.models`) with a subset ``free`` of its
    parameters fitted, integrated by :func:`kernels.dopri5.solve`.

    ``observation_weights``: {observation: (weights float64[S], scale)} so
    that prediction = scale * weights . y(t). ``initial_state(params[R, P],
    covariates of the R lanes' individuals) -> y0[R, S]``. ``use_doses``: add
    the data's doses (cells / ``cells_per_unit``) to the ``infusion`` state.
    ``events``: kernel events (:mod:`kernels.events`, e.g. an arm's
    interventions) applied to every lane.
    """

    fd_step = 1e-4   # forward differences on solutions accurate to ~rtol 1e-8

    def __init__(self, name, model, free, observation_weights, initial_state, use_doses,
                 fixed=None, rtol=1e-8, atol=1e-10, max_steps=100_000, events=()):
        unknown = [p for p in list(free) + list(fixed or {}) if p not in model.parameter_names]
        if unknown:
            raise ValueError(f"{name}: {unknown} are not parameters of model {model.name!r}; "
                             f"parameters are {', '.join(model.parameter_names)}")
        if not free:
            raise ValueError(f"{name}: no free parameter")
        by_name = {p.name: p for p in model.parameters}
        super().__init__(name, free, {p: by_name[p].typical for p in free},
                         {p: by_name[p].sd_log for p in free}, tuple(observation_weights))
        self.model = model
        self.base = model.typical_parameters(**(fixed or {}))
        self.free_index = np.array([model.parameter_index(p) for p in free], dtype=np.int64)
        self.weights = np.array([w for w, _ in observation_weights.values()], dtype=np.float64)
        self.scales = np.array([s for _, s in observation_weights.values()], dtype=np.float64)
        self.initial_state = initial_state
        self.use_doses = use_doses
        self.rtol, self.atol, self.max_steps = rtol, atol, max_steps
        self.events = tuple(events)

    def initial_estimates(self, data):
        """Three starts per individual: the typical values, and all free
        parameters one between-patient sd of the log above and below them
        (these models have several local optima, e.g. a cured and a relapsing
        course; on simulated cart data the two extra starts raised recovery from
        about 70% to about 95% of patients)."""
        typical = self.typical_vector()
        sd_log = np.array([self.sd_log[name] for name in self.parameter_names])
        starts = typical[None, :] * np.exp(np.outer(KERNEL_STARTS_SD, sd_log))
        return np.repeat(starts[:, None, :], data.n_individuals, axis=1)

    def full_parameters(self, theta):
        """float64[R, P_model]: the model's parameters with theta[R, P] in the free slots."""
        full = np.repeat(self.base[None, :], theta.shape[0], axis=0)
        full[:, self.free_index] = theta
        return full

    def _doses(self, data, n_repeats):
        if not self.use_doses or data.dose_time.size == 0:
            return None
        times, column = np.unique(data.dose_time, return_inverse=True)
        amounts = np.zeros((data.n_individuals, times.size))
        np.add.at(amounts, (data.dose_individual, column),
                  data.dose_amount / self.model.cells_per_unit)
        return dopri5.Doses(times, [self.model.roles["infusion"][0]] * times.size,
                            np.tile(amounts, (n_repeats, 1)))

    def _predict_many(self, theta, data):
        k, n, _ = theta.shape
        params = self.full_parameters(theta.reshape(k * n, -1))
        lane_individual = np.tile(np.arange(n), k)
        covariates = {c: v[lane_individual] for c, v in data.covariates.items()}
        y0 = self.initial_state(params, covariates)
        times, time_index = np.unique(data.time, return_inverse=True)
        options = {"events": self.events} if self.events else {}
        solution = dopri5.solve(self.model, y0, params, 0.0, float(times[-1]), rtol=self.rtol,
                                atol=self.atol, save_at=times, doses=self._doses(data, k),
                                max_steps=self.max_steps, **options)
        saved = np.where((solution.status == OK)[:, None, None], solution.saved, np.nan)
        code = _codes(self.observations, data.name)
        lanes = np.arange(k)[:, None] * n + data.individual[None, :]        # [K, M]
        states = saved[lanes, time_index[None, :], :]                        # [K, M, S]
        return np.einsum("kms,ms->km", states, self.weights[code]) * self.scales[code]


def _codes(names, observed):
    """int64[M]: index of each observed name in ``names`` (0 for names not among them)."""
    unique, inverse = np.unique(observed.astype(str), return_inverse=True)
    lookup = np.array([names.index(u) if u in names else 0 for u in unique], dtype=np.int64)
    return lookup[inverse]


def _role_weights(model, role, scale):
    weights = np.zeros(len(model.states))
    for state in model.roles[role]:
        weights[model.state_index(state)] = 1.0
    return weights, scale


class SteinODE(KernelModel):
    """Stein 2019's model as an ODE through the kernel (``stein_ode``)."""

    initial_estimates = stein_initial_estimates

    def __init__(self, **options):
        model = kinetics.model()
        super().__init__("stein_ode", model, model.parameter_names,
                         {"cart": _role_weights(model, "car_t", 1.0)},
                         lambda params, covariates: kinetics.initial_state(params),
                         use_doses=False, **options)
        self.upper = dict(STEIN_UPPER)


def _tumour_initial_state(model):
    """y0 from the covariate tumour_burden_cells (cells) when present."""
    def initial_state(params, covariates):
        if "tumour_burden_cells" in covariates and "tumour" in model.roles:
            return model.initial_states(covariates["tumour_burden_cells"] /
                                        model.cells_per_unit, params)
        return np.repeat(model.typical_initial_state()[None, :], params.shape[0], axis=0)
    return initial_state


def _kernel_model(name, free=None, **options):
    model = get_model(name)
    if free is None:
        if name not in DEFAULT_FREE:
            raise ValueError(f"{name}: say which parameters to fit (free=...); parameters are "
                             f"{', '.join(model.parameter_names)}")
        free = DEFAULT_FREE[name]
    observations = {obs: _role_weights(model, role, model.cells_per_unit if cells else 1.0)
                    for obs, (role, cells) in OBSERVATION_ROLES.items() if role in model.roles}
    return KernelModel(name, model, tuple(free), observations, _tumour_initial_state(model),
                       use_doses=True, **options)


def structural_names():
    """The names :func:`get_structural` accepts."""
    return ("stein", "stein_ode") + tuple(m for m in MODELS if m not in FIT_ONLY_MODELS)


def get_structural(name, **options):
    """The structural model ``name`` (module docstring). Options: for kernel
    models ``free`` (tuple of parameter names), ``fixed`` ({name: value}),
    ``rtol``, ``atol``, ``max_steps``, ``events``; ``stein_ode`` takes the solver
    options."""
    if name == "stein":
        if options:
            raise ValueError(f"stein takes no options, got {sorted(options)}")
        return SteinClosedForm()
    if name == "stein_ode":
        return SteinODE(**options)
    if name in MODELS and name not in FIT_ONLY_MODELS:
        return _kernel_model(name, **options)
    raise KeyError(f"unknown structural model {name!r}; models are "
                   f"{', '.join(structural_names())}")
