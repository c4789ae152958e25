"""The module classes of jaxvae's own families, by name: what `load_model` rebuilds unasked.

A workdir's marker names its model's class and fields (`checkpoints.model_spec`).
`load_model` rebuilds a class registered here, or the class its caller names in
code (`load_model(workdir, model=MyModule)`); a marker never makes jaxvae import,
look up or run anything else by name. Each family registers its classes where it
defines them, with the function that initialises their params (`init(model, key)`).
"""

from typing import Callable

MODULES: dict[str, tuple[type, Callable]] = {}


def register(cls: type, init: Callable) -> type:
  """Registers the linen module class `cls` (by its name) with `init(model, key) -> params`."""
  MODULES[cls.__name__] = (cls, init)
  return cls
