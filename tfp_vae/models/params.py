"""A model's configurable parameters, declared once: each model class lists its own in `PARAMS`
(a subclass adds to its bases'), and everything that handles parameters reads that table.

  - the constructor validates each of its parameters through it (`assign`): one ValueError
    naming the parameter, whatever the caller (`VAE(z_dim=0)`, `from_config`, bin/train);
  - `get_config` is generated from it (`config`), so a saved model keeps every parameter;
  - bin/train's `build_model` passes the flags the table names (`Param.flag`) to the
    constructor of `models.MODELS[--model]`, and `cli.running.RUN_FLAGS` records those that
    define a run (`Param.run_defining`) in each checkpoint, for `--resume` to compare.

A parameter's default is the constructor's own (its signature is the API people read); `table`
gives a class's parameters and `defaults` their defaults. To add a parameter to a model: give
its constructor the argument, add a `Param` to the class's `PARAMS`, and use `self.<name>`;
for a flag, define it in `tfp_vae/cli/train.py` (its default None, the model's, or the model's
default itself). tests/test_model_config.py holds every parameter to this.
"""

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tfp_vae import checks


@dataclasses.dataclass(frozen=True)
class Param:
    """One configurable parameter of a model class.

    Attributes:
      name: the constructor's argument, the model's attribute and the config's key.
      check: value -> the value the model keeps, raising a one-line ValueError that names the
        parameter (`checks.positive_int` & co., with the parameter's name bound). None: the
        constructor resolves it itself (it depends on other arguments: `input_shape` on `x_dim`,
        `likelihood` on the input size) and keeps it as `self.<name>` or says in `to_config`.
      to_config: model -> the config's value; None: the attribute, a tuple as a list.
      flag: bin/train sets it with the flag of the same name (a flag value None: the default).
      flag_default: the flag's default when it is neither None nor the model's own (--seed=0:
        a run is reproducible unless asked otherwise).
      run_defining: the flag is one of the run's settings, recorded in each checkpoint, which a
        `--resume` must repeat (False: it takes effect on resume, as --clip_norm does).
    """

    name: str
    check: Callable[[Any], Any] | None = None
    to_config: Callable[[Any], Any] | None = None
    flag: bool = False
    flag_default: Any = None
    run_defining: bool = True


# ---- checks (value -> kept value), for `Param.check` ----------------------------------------


def positive_int(what: str) -> Callable[[Any], int]:
    """`checks.positive_int` for the parameter that errors call `what`."""
    return lambda value: checks.positive_int(value, what)


def positive_ints(what: str) -> Callable[[Any], tuple[int, ...]]:
    """`checks.positive_ints` (layer sizes, kept as a tuple)."""
    return lambda value: checks.positive_ints(value, what)


def finite_float(what: str, minimum: float | None = None) -> Callable[[Any], float]:
    """`checks.finite_float`, >= `minimum` when given."""
    return lambda value: checks.finite_float(value, what, minimum)


def one_of(what: str, choices: Sequence[str]) -> Callable[[Any], str]:
    """A value among `choices` (strings)."""

    def check(value):
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"{what} must be one of {tuple(choices)}; got {value!r}.")
        return value

    return check


def boolean(what: str) -> Callable[[Any], bool]:
    """True or False (also NumPy's, and 0 or 1), kept as a bool: a string such as "false" is
    refused rather than taken as True."""

    def check(value):
        if isinstance(value, (bool, np.bool_)) or (
            isinstance(value, (int, np.integer)) and value in (0, 1)
        ):
            return bool(value)
        raise ValueError(f"{what} must be True or False; got {value!r}.")

    return check


def activation(what: str) -> Callable[[Any], Any]:
    """A Keras activation (a name, "elu", or a callable), kept as given."""

    def check(value):
        import keras

        try:
            keras.activations.get(value)
        except (ValueError, TypeError):
            raise ValueError(
                f"{what} must be a Keras activation (a name such as 'elu', or a function); "
                f"got {value!r}."
            ) from None
        return value

    return check


# ---- the table and its uses -------------------------------------------------------------------


def table(cls: type) -> dict[str, Param]:
    """name -> Param of every parameter of model class `cls`: its bases' first, then its own
    `PARAMS`; names in a class's `FIXED_PARAMS` (which it sets itself, M1M2's likelihood) are
    dropped from its bases'."""
    params = {}
    for klass in reversed(cls.__mro__):
        for name in vars(klass).get("FIXED_PARAMS", ()):
            params.pop(name, None)
        params.update((p.name, p) for p in vars(klass).get("PARAMS", ()))
    return params


def defaults(cls: type) -> dict[str, Any]:
    """name -> default of every parameter of `cls` that has one: the constructor's (the first
    class along the MRO whose `__init__` names the argument)."""
    result = {}
    for name in table(cls):
        for klass in cls.__mro__:
            init = vars(klass).get("__init__")
            parameter = init and inspect.signature(init).parameters.get(name)
            if parameter:
                if parameter.default is not inspect.Parameter.empty:
                    result[name] = parameter.default
                break
    return result


def assign(model, owner: type, arguments: dict[str, Any]) -> None:
    """Checks the parameters that `owner` (a class along `model`'s MRO) declares, with a
    `check`, and sets them on `model`; `arguments` holds the constructor's arguments by name
    (its `locals()`)."""
    for p in vars(owner).get("PARAMS", ()):
        if p.check is not None:
            setattr(model, p.name, p.check(arguments[p.name]))


def config(model) -> dict[str, Any]:
    """name -> config value of every parameter of `model` (for its `get_config`)."""
    result = {}
    for name, p in table(type(model)).items():
        value = p.to_config(model) if p.to_config else getattr(model, name)
        result[name] = list(value) if isinstance(value, tuple) else value
    return result
