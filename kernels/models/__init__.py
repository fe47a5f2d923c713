"""The model library. ``get_model(name, **options)`` returns a :class:`Model`."""
from kernels.models import cart, cart2, predator_prey
from kernels.models import dual_antigen
from kernels.models import translation
from kernels.models import kinetics
from kernels.models import costim
from kernels.models.base import Model, Parameter, State

MODELS = {
    "kinetics": kinetics.model,
    "costim": costim.model,
    "translation": translation.model,
    "dual_antigen": dual_antigen.model,
    "cart2": cart2.model,
    "cart": cart.model,
    "predator_prey": predator_prey.model,
}


def get_model(name, **options):
    try:
        factory = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; models are {sorted(MODELS)}") from None
    return factory(**options)


__all__ = ["MODELS", "Model", "Parameter", "State", "get_model"]
