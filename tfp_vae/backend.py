"""The active Keras backend: its TFP substrate, its random seeds, and the few shims where the
frameworks differ.

Every numeric module of the package (the distribution layers, the bounds, the models) writes its
maths once, in `keras.ops` and the TFP of this module (`tfd`, `tfb`, `tfp`):
`tensorflow_probability` on the TensorFlow backend, `tensorflow_probability.substrates.jax` on
JAX (which needs no TensorFlow installed). What differs between the frameworks beyond that lives
in one module each: the training step's machinery (`models/steps_tf.py` and
`models/steps_jax.py`, chosen by `steps()`), and here, the seeds and whether a value is
concrete (an eager tensor or array, whose values a check can read on the host).

Seeds: every random draw takes an explicit stateless seed, a pair of integers, int32 [2] on
TensorFlow (as `tf.random.stateless_*` take them) and uint32 [2] on JAX (a raw
`jax.random.PRNGKey`); `as_seed` makes either from anything a user passes.
"""

import importlib
import typing

import keras
import numpy as np

NAME = keras.backend.backend()
BACKENDS = ("tensorflow", "jax")


class _NoTensorFlow:
    """An import hook under which `import tensorflow` fails, as where TF is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError("tfp_vae imports TFP's JAX substrate without TensorFlow")
        return None


if NAME == "jax":
    import sys

    import jax.numpy as _numpy

    # TFP's JAX substrate imports TensorFlow, when installed, only to copy its docstrings: seconds
    # of start-up and TF's log lines on stderr. Import it as if TF were absent (unless the process
    # already has TF), and load the distributions and bijectors now, under the same hook.
    _hook = None if "tensorflow" in sys.modules else _NoTensorFlow()
    if _hook:
        sys.meta_path.insert(0, _hook)
    try:
        from tensorflow_probability.substrates import jax as tfp

        tfp.distributions.Normal, tfp.bijectors.Identity  # noqa: B018 (load the lazy modules)
    finally:
        if _hook:
            sys.meta_path.remove(_hook)
elif NAME == "tensorflow":
    import tensorflow as _numpy
    import tensorflow_probability as tfp
else:
    raise ImportError(
        f"tfp_vae runs on the Keras backends {BACKENDS}; KERAS_BACKEND is {NAME!r}: set "
        "KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax."
    )

tfd = tfp.distributions
"""`tfp.distributions` of the active backend's TFP substrate (TF's, or `substrates.jax`)."""
tfb = tfp.bijectors
"""`tfp.bijectors` of the active backend's TFP substrate."""
# float32 as the framework's own dtype object (a distribution's `dtype=` argument).
float32 = _numpy.float32


def is_tensorflow() -> bool:
    """Whether Keras runs on TensorFlow."""
    return NAME == "tensorflow"


def is_jax() -> bool:
    """Whether Keras runs on JAX."""
    return NAME == "jax"


def steps():
    """The module of the training step's machinery for the active backend:
    `models/steps_tf.py` or `models/steps_jax.py`."""
    return importlib.import_module(f"tfp_vae.models.steps_{'tf' if is_tensorflow() else 'jax'}")


def refuse_on_jax(what: str, alternative: str) -> None:
    """Raises ValueError in one line when Keras runs on JAX: `what` needs TensorFlow, and
    `alternative` says what to do instead."""
    if is_jax():
        raise ValueError(
            f"{what} needs the TensorFlow backend and Keras runs on JAX; {alternative}."
        )


# ---- concrete values --------------------------------------------------------------------------


def is_concrete(x=None) -> bool:
    """Whether `x` (a tensor or array; None: the current context) has values the host can read
    now: TensorFlow executing eagerly, or anything on JAX but a tracer (inside `jax.jit` or
    `jax.grad`). Checks read such values and raise ValueError; elsewhere they cannot."""
    if is_tensorflow():
        import tensorflow as tf

        return tf.executing_eagerly()
    import jax

    return not isinstance(x, jax.core.Tracer)


def is_tensor(x) -> bool:
    """Whether `x` is a tensor of the backend (a `tf.Tensor`, a `jax.Array` or a tracer)."""
    return keras.ops.is_tensor(x)


def static_shape(x) -> tuple | None:
    """The shape of `x` as a tuple (None for a size unknown when tracing a TF graph), or None
    when even its rank is unknown (a TF SavedModel signature's input)."""
    shape = x.shape
    if getattr(shape, "rank", 0) is None:
        return None
    return tuple(None if d is None else int(d) for d in shape)


def static_value(x):
    """The value of `x` when the host can know it now (a Python number or NumPy array as it is;
    an eager TF tensor or a graph constant, `tf.get_static_value`; a JAX array outside
    `jax.jit`), as a NumPy array; None for a value known only when a graph or `jax.jit` runs."""
    if not is_tensor(x):
        return x
    if is_tensorflow():
        import tensorflow as tf

        return tf.get_static_value(x)
    return to_numpy(x) if is_concrete(x) else None


def dtype_name(x) -> str:
    """The dtype of `x` as Keras names it ("float32", "int64", "bool", "string", ...)."""
    try:
        return keras.backend.standardize_dtype(x.dtype)
    except (ValueError, TypeError):
        return getattr(x.dtype, "name", str(x.dtype))


def as_tensor(x):
    """`x` as a tensor of the backend, or on JAX, when `x` is data in memory (a list, a NumPy
    array), as a NumPy array: the checks read it on the host (a string array, which JAX cannot
    hold, still reaches their dtype check)."""
    if is_tensorflow():
        import tensorflow as tf

        return tf.convert_to_tensor(x)
    if keras.ops.is_tensor(x):
        return x
    return np.asarray(x)


def to_numpy(x) -> np.ndarray:
    """A concrete tensor or array as a NumPy array."""
    return np.asarray(keras.ops.convert_to_numpy(x))


def compiled(fn, jit_compile: bool = False, static_argnums: tuple[int, ...] = ()):
    """`fn` compiled once per input signature: a `tf.function` (whole with XLA when
    `jit_compile`) on TF; `jax.jit` on JAX (always XLA), with the Python ints at
    `static_argnums` (sizes) static."""
    if is_tensorflow():
        import tensorflow as tf

        return tf.function(fn, jit_compile=jit_compile, autograph=False)
    import jax

    return jax.jit(fn, static_argnums=static_argnums)


# ---- seeds ------------------------------------------------------------------------------------

SEED_DTYPE = "int32" if NAME == "tensorflow" else "uint32"


def seed_pair(first, second):
    """The stateless seed [first, second] (ints or integer scalars) in the backend's seed dtype
    (int32 on TF, uint32 on JAX): [2]."""
    return keras.ops.stack([keras.ops.cast(first, SEED_DTYPE), keras.ops.cast(second, SEED_DTYPE)])


def as_seed(seed=None):
    """A stateless seed [2] for TFP's samplers from `seed`: two integers (a list, array or
    tensor), or None for a fresh one (from Keras' global random state, which
    `keras.utils.set_random_seed` fixes). On TF the int32 seed is kept as it is."""
    if is_tensorflow():
        import tensorflow as tf

        if seed is None:  # Stateful TF ops: also inside a tf.function (a SavedModel signature).
            return tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
        return seed if tf.is_tensor(seed) else tf.convert_to_tensor(seed, tf.int32)
    if seed is None:
        seed = keras.random.randint([2], 0, 2**31 - 1, dtype="int32")
    return keras.ops.cast(seed, "uint32")


def sampling_seed(seed=None):
    """The seed a public method (`elbo`, `iwae`, `sample`) hands TFP's samplers: `seed` as it is
    on TF (None: TFP's stateful sampling, as before), on JAX always a key (`as_seed`; None: a
    fresh one), since TFP on JAX has no stateful sampling."""
    if is_tensorflow():
        return seed
    return as_seed(seed)


def split_seed(seed, n: int = 2):
    """`n` independent stateless seeds from one (`tfp.random.split_seed`)."""
    return tfp.random.split_seed(seed, n=n)


# The type of a tensor in the package's annotations: a `tf.Tensor` on TF, a `jax.Array` on JAX.
Tensor = typing.Any
