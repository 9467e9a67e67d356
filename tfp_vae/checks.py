"""Input checks, one home for all models and signatures: images, features, latents, counts,
seeds and labels.

Each check raises a ValueError with one sentence that names the problem and its fix when it runs
eagerly, and the same sentence as a graph assertion inside a `tf.function` or a SavedModel
signature. Value checks also come as int32 "problem codes" (`image_problem`, `label_problem`):
plain tensor ops that compile under XLA, which drops assertion ops; the training step computes
the code inside XLA and asserts on it outside (`raise_on_problem`).

The checks are written once, in `keras.ops`, for both backends. On JAX a value is checked where
the host can read it (`tfp_vae.backend.is_concrete`: outside `jax.jit`), with the same messages;
the training and test steps check each batch on the host before it reaches the compiled step
(`models/steps_jax.py`). Graph assertions (a value the host cannot read: inside a
`tf.function`, a SavedModel signature) exist on TensorFlow only.
"""

import inspect
import math
import os
from collections.abc import Sequence

import keras
import numpy as np

from tfp_vae import backend
from tfp_vae.backend import Tensor

ops = keras.ops

NUM_CLASSES = 10  # The default number of classes of the semi-supervised models (MNIST's digits).


def resolve_input_shape(
    input_shape: int | Sequence[int] | None = None, x_dim: int | None = None
) -> tuple[int, ...]:
    """A model's `input_shape` argument as a tuple of positive ints (one input, no batch axis):
    `input_shape` ((28, 28, 1), (32, 32, 3), (64,) or an int), else (x_dim,) from the older
    `x_dim` argument, else MNIST's (784,). ValueError when both are given and disagree."""
    if input_shape is None:
        input_shape = (784 if x_dim is None else x_dim,)
    elif isinstance(input_shape, (int, np.integer)):
        input_shape = (input_shape,)
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(d < 1 for d in shape) or any(int(d) != d for d in input_shape):
        raise ValueError(
            f"input_shape must be the shape of one input, positive integers such as "
            f"(28, 28, 1) or (64,); got {input_shape!r}."
        )
    if x_dim is not None and int(x_dim) != math.prod(shape):
        raise ValueError(
            f"x_dim={x_dim} does not match input_shape={shape} "
            f"({math.prod(shape)} values); pass input_shape alone."
        )
    return shape


def positive_int(value, name: str) -> int:
    """`value` as an int >= 1 (a whole number: 3 and 3.0, not 2.5 or True), else a ValueError
    naming the argument: a model's sizes are checked once, at its constructor."""
    try:
        whole = not isinstance(value, bool) and int(value) == float(value)
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or int(value) < 1:
        raise ValueError(f"{name} must be a positive whole number; got {value!r}.")
    return int(value)


def positive_ints(values, name: str) -> tuple[int, ...]:
    """A sequence of `positive_int`s (layer sizes) as a tuple."""
    try:
        items = list(values)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of layer sizes; got {values!r}.") from None
    return tuple(positive_int(v, f"{name}[{i}]") for i, v in enumerate(items))


def finite_float(value, name: str, minimum: float | None = None) -> float:
    """`value` as a finite float (>= `minimum` when given), else a ValueError naming it: NaN and
    Inf never reach a loss."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number; got {value!r}.") from None
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        bound = "" if minimum is None else f" and >= {minimum:g}"
        raise ValueError(f"{name} must be finite{bound}; got {value!r}.")
    return number


def accepted_shapes(input_shape: Sequence[int]) -> list[tuple[int | None, ...]]:
    """The batch shapes inputs of `input_shape` may come in, the flattened [B, prod] first:
    [B, *input_shape]; without a trailing 1 channel ([B, 28, 28] for (28, 28, 1)); and, for
    MNIST's flat (784,), as 28x28 images ([B, 28, 28], [B, 28, 28, 1])."""
    shape = tuple(input_shape)
    shapes = [(None, math.prod(shape)), (None,) + shape]
    if shape == (784,):
        shape = (28, 28, 1)
        shapes.append((None,) + shape)
    if len(shape) > 1 and shape[-1] == 1:
        shapes.append((None,) + shape[:-1])
    return list(dict.fromkeys(shapes))


def _expected_text(what, input_shape):
    """'Expected images of shape [batch, 32, 32, 3] (or [batch, 3072])'."""
    shapes = accepted_shapes(input_shape)
    main = shapes[1] if len(input_shape) > 1 else shapes[0]
    others = [s for s in shapes if s != main]

    def text(s):
        return "[" + ", ".join(["batch"] + [str(d) for d in s[1:]]) + "]"

    more = f" (or {' or '.join(text(s) for s in others)})" if others else ""
    return f"Expected {what} of shape {text(main)}{more}"


def check_images(
    x: Tensor | np.ndarray,
    input_shape: int | Sequence[int],
    binary: bool = True,
    check_pixels: bool = True,
) -> Tensor:
    """Validates a batch of images and returns it as float32 [B, prod(input_shape)] (flat).

    `input_shape`: one image's shape, (28, 28, 1) say, or its number of pixels (784). Accepts
    the shapes of `accepted_shapes` (for 784: [B, 784], [B, 28, 28], [B, 28, 28, 1]). Raises
    ValueError naming the expected shape for anything else; for pixels that are NaN/Inf,
    outside [0, 1] or (when `binary`) not exactly 0 or 1, raises ValueError eagerly or fails a
    graph assertion with the same message. In a graph where the rank is not known when tracing
    (a SavedModel signature takes any shape), the shape is asserted on too, with the same
    message.
    """
    x = backend.as_tensor(x)
    if not _is_numeric(x, allow_bool=True):
        raise ValueError(f"Images must be numeric; got dtype {backend.dtype_name(x)}.")
    shape = resolve_input_shape(input_shape)
    x = check_shape(ops.cast(x, "float32"), accepted_shapes(shape), _expected_text("images", shape))
    return raise_on_problem(x, image_problem(x, binary)) if check_pixels else x


def _is_numeric(x, allow_bool=False):
    """Whether `x` has a floating or integer dtype (or bool, when `allow_bool`)."""
    name = backend.dtype_name(x)
    return _is_floating(x) or _is_integer(x) or (allow_bool and name == "bool")


def _is_floating(x):
    return backend.dtype_name(x).startswith(("float", "bfloat"))


def _is_integer(x):
    return backend.dtype_name(x).startswith(("int", "uint"))


def shape_text(x):
    """The shape of tensor `x` written as Python writes a tuple, "(5, 783)": a str when it is
    known statically, else a string tensor (for a graph assertion's message; TF only)."""
    shape = backend.static_shape(x)
    if shape is not None and None not in shape:
        return str(shape)
    import tensorflow as tf  # A shape unknown when tracing: only in a TF graph.

    dims = tf.strings.as_string(tf.shape(x))
    text = tf.strings.reduce_join(dims, separator=", ")
    text = tf.where(tf.equal(tf.size(dims), 1), tf.strings.join([text, ","]), text)
    return tf.strings.join(["(", text, ")"])


def assert_that(value, ok, parts):
    """Returns `value` (a tensor or a structure of them) when the bool scalar `ok` holds, else
    raises ValueError eagerly or fails a graph assertion (behind which `value` then is), with
    the message `parts` joined: strs, and tensors written by value (strings as they are).
    Inside `jax.jit` (values the host cannot read) `value` is returned unchecked: the JAX steps
    check their batches on the host first."""
    if backend.is_concrete(ok):
        if not bool(ok):
            raise ValueError("".join(p if isinstance(p, str) else _eager_text(p) for p in parts))
        return value
    if not backend.is_tensorflow():
        return value
    import tensorflow as tf

    message = tf.strings.join(
        [
            p if isinstance(p, str) or p.dtype == tf.string else tf.strings.as_string(p)
            for p in parts
        ]
    )
    with tf.control_dependencies([tf.debugging.Assert(ok, [message])]):
        return tf.nest.map_structure(tf.identity, value)


def _eager_text(tensor):
    value = tensor.numpy() if hasattr(tensor, "numpy") else backend.to_numpy(tensor)
    value = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
    return value.decode() if isinstance(value, bytes) else str(value)


def check_shape(x, shapes, expected):
    """`x` if its shape is one of `shapes` (tuples; None matches any size, as a batch axis),
    reshaped to the first of them (at most one None); else the error "{expected}; got shape
    (...).": a ValueError eagerly or when tracing with a known rank (a size that is unknown
    then fails where `shapes` need a given one, as Keras' steps always checked), else (a graph
    input of unknown rank, as a SavedModel signature's) a failing graph assertion, which runs
    before the reshape could fail."""
    shape = backend.static_shape(x)
    target = [-1 if d is None else d for d in shapes[0]]
    if shape is not None:
        if not _fits(shape, shapes):
            raise ValueError(f"{expected}; got shape {shape}.")
        return x if _fits(shape, shapes[:1]) else ops.reshape(x, target)
    import tensorflow as tf  # An input of unknown rank: only a TF SavedModel signature's.

    dims = tf.shape(x)
    longest = max(len(s) for s in shapes)
    padded = tf.concat([dims, tf.fill([longest], -1)], axis=0)  # Indexable whatever the rank.
    ok = tf.constant(False)
    for s in shapes:
        match = tf.equal(tf.rank(x), len(s))
        for i, e in enumerate(s):
            if e is not None:
                match = match & tf.equal(padded[i], e)
        ok = ok | match
    x = assert_that(x, ok, [f"{expected}; got shape ", shape_text(x), "."])
    return tf.reshape(x, target)


def _fits(dims, shapes):
    """Whether static dims are one of `shapes` (None there matching any size)."""
    return any(
        len(dims) == len(s) and all(e is None or d == e for d, e in zip(dims, s, strict=True))
        for s in shapes
    )


def check_count(
    n: int | Tensor,
    name: str = "n",
    minimum: int = 0,
    what: str = "samples",
    maximum: int | None = None,
    beyond: str = "",
) -> Tensor:
    """A count, such as the number of samples to draw: an integer scalar in [`minimum`,
    `maximum`] (at most `MAX_COUNT`, int32's range, when `maximum` is None), returned as int32
    []. Raises ValueError (or asserts in a graph) with a sentence naming `name`; `beyond` ends
    the sentence of a count above the maximum (how to go past it)."""
    top = MAX_COUNT if maximum is None else min(int(maximum), MAX_COUNT)
    too_many = f"{name} must be at most {top} (the number of {what}); got "
    if isinstance(n, (int, np.integer)) and not isinstance(n, bool) and int(n) > top:
        raise ValueError(f"{too_many}{int(n)}.{beyond}")  # Before int32 (or int64) wraps it.
    n = backend.as_tensor(n)
    if not _is_integer(n):
        raise ValueError(
            f"{name} must be an integer (the number of {what}); got dtype {backend.dtype_name(n)}."
        )
    n = check_shape(n, [()], f"{name} must be a single integer (the number of {what}), shape []")
    if backend.is_tensorflow():
        import tensorflow as tf

        wide = tf.cast(n, tf.int64)  # Compared before the cast to int32, which would wrap.
        wide = assert_that(wide, wide <= top, [too_many, wide, f".{beyond}"])
        n = tf.cast(wide, tf.int32)
    else:  # JAX has no int64 by default: a concrete count is compared on the host.
        if backend.is_concrete(n) and int(backend.to_numpy(n)) > top:
            raise ValueError(f"{too_many}{int(backend.to_numpy(n))}.{beyond}")
        n = ops.cast(n, "int32")
    return assert_that(
        n, n >= minimum, [f"{name} must be >= {minimum} (the number of {what}); got ", n, "."]
    )


# ---- sizes: what a tensor, and the machine, can hold -----------------------------------------

# Counts are int32 in the graphs (n, m, a batch size) ...
MAX_COUNT = 2**31 - 1
# ... and so is the number of values of one tensor in many TensorFlow kernels (reshape, the random
# ops, GPU indexing): a tensor of more values wraps to a negative size or crashes the process.
MAX_VALUES = 2**31 - 1
# The values (float32) of the widest intermediate of one chunk of rows: 64 MiB. Large counts of
# samples are drawn in chunks of at most this many values (`chunk_rows`).
CHUNK_VALUES = 2**24
# Importance samples per IWAE bound: float32 log-weights and counts resolve no finer beyond it.
MAX_IMPORTANCE_SAMPLES = 2**24


def check_importance_samples(m: int | Tensor, name: str = "m") -> Tensor:
    """The number of importance samples of an IWAE bound: an integer in
    [1, `MAX_IMPORTANCE_SAMPLES`], as int32 [] (see `check_count`)."""
    return check_count(
        m,
        name,
        minimum=1,
        what="importance samples",
        maximum=MAX_IMPORTANCE_SAMPLES,
        beyond=(
            " For more, take k bounds of m samples with other seeds: their log-mean-exp is the "
            "bound of k * m samples."
        ),
    )


def available_memory() -> int | None:
    """Bytes of memory this process may still allocate (Linux MemAvailable; the sysconf count of
    free pages elsewhere), or None where the machine does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def chunk_rows(values_per_row: int) -> int:
    """Rows per chunk so that one chunk's widest intermediate holds at most `CHUNK_VALUES`."""
    return max(1, CHUNK_VALUES // max(1, int(values_per_row)))


def _gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB"


def check_size(
    count: int | Tensor,
    values_per_row: int,
    name: str,
    how: str,
    bytes_per_row: int | None = None,
    memory: int | None = None,
) -> Tensor | int:
    """Refuses, before anything is allocated, `count` rows (a batch, samples) whose tensors a
    process cannot hold: more than `MAX_VALUES` values in one tensor of `values_per_row` values
    a row (int32's range), or (eagerly, for a Python or eager count) an estimate of
    `count * bytes_per_row` bytes (default: 4 per value) above `memory` (default: the memory
    available now, `available_memory`). The error is one sentence naming `name`, the limit
    and, in `how`, the way past it. Returns `count` (behind a graph assertion in a graph)."""
    limit = MAX_VALUES // max(1, int(values_per_row))
    static = backend.static_value(count)
    if static is None and not backend.is_tensorflow():
        return count  # Inside jax.jit: shapes are static there, checked where they were made.
    if static is None:  # A graph's count: the int32 range of one tensor only.
        import tensorflow as tf

        wide = tf.cast(count, tf.int64)
        return assert_that(
            count,
            wide <= limit,
            [f"{name}=", wide, f" is too large: {_rows_text(values_per_row, limit)}; {how}"],
        )
    static = int(static)
    if static > limit:
        raise ValueError(
            f"{name}={static} is too large: {_rows_text(values_per_row, limit)}; {how}"
        )
    memory = available_memory() if memory is None else memory
    need = static * (4 * int(values_per_row) if bytes_per_row is None else int(bytes_per_row))
    if memory is not None and need > memory:
        fit = memory * static // need
        raise ValueError(
            f"{name}={static} is too large: it needs about {_gib(need)}, more than the "
            f"{_gib(memory)} of memory available now (about {fit} fit); {how}"
        )
    return count


def _rows_text(values_per_row, limit):
    return (
        f"one tensor holds at most {limit} rows of {values_per_row} values (2**31 - 1 values, "
        "int32's range)"
    )


def in_chunks(fn, n, rows: int, seed=None):
    """`fn(start, size, seed)` (a dict of tensors, each [size, ...]: rows start..start+size of
    the result) for a count `n` (int32 scalar), drawn `rows` at a time and concatenated, so that
    no intermediate holds more than `rows` rows: one call `fn(0, n, seed)` when n <= rows (the
    same draws as without chunks); else chunk i with the stateless seed `seed` folded with i
    (or None: stateful draws, TF only). On TF an n known only when a graph runs (a SavedModel
    signature's) is chunked in the graph (`models/steps_tf.py`'s `in_chunks_graph`); on JAX n
    is concrete (its shapes are static) and the chunks are a Python loop."""
    static = backend.static_value(n)
    if static is not None and int(static) <= rows:
        return fn(0, n if backend.is_tensorflow() else int(static), seed)
    if backend.is_tensorflow():
        return backend.steps().in_chunks_graph(fn, n, rows, seed, static)
    if static is None:
        raise ValueError(
            "On JAX the number of samples must be known outside jax.jit (shapes are static); "
            "pass n as a Python int."
        )
    import jax

    total = int(static)
    parts = [
        fn(start, min(rows, total - start), None if seed is None else jax.random.fold_in(seed, i))
        for i, start in enumerate(range(0, total, rows))
    ]
    return {key: ops.concatenate([part[key] for part in parts]) for key in parts[0]}


def check_seed(seed: Tensor | np.ndarray | Sequence[int]) -> Tensor:
    """A stateless seed: two integers, returned as int32 [2]. Raises ValueError (or asserts in a
    graph) naming the expected shape for anything else."""
    seed = backend.as_tensor(seed)
    if not _is_integer(seed):
        raise ValueError(
            f"seed must be two integers, e.g. [0, 0]; got dtype {backend.dtype_name(seed)}."
        )
    return check_shape(
        ops.cast(seed, "int32"), [(2,)], "seed must be two integers, shape [2], e.g. [0, 0]"
    )


def padded_batch(fn, x, *args):
    """`fn(x, *args)`, a dict of tensors with x's batch axis first, also for an empty batch x
    (checked, [B, d]): TFP's stateless samplers divide by the batch size, so an empty batch goes
    through as one all-zero row (a valid image) whose results are dropped. Any other batch goes
    through as it is. (TF only: the SavedModel signatures'.)"""
    import tensorflow as tf

    size = tf.shape(x)[0]
    padded = tf.pad(x, [[0, tf.maximum(1 - size, 0)], [0, 0]])
    return {name: value[:size] for name, value in fn(padded, *args).items()}


def check_array(x, check, rows=8192):
    """Runs `check` (eager, raising ValueError) on `x` when it is data in memory, a NumPy array
    or an eager tensor, `rows` rows at a time (no copy of a large array); anything else (a
    tf.data.Dataset, a generator) is left to the step's own checks. For `fit`/`evaluate`, so
    that bad arrays fail with the check's sentence before the first step."""
    if not (isinstance(x, np.ndarray) or (backend.is_tensor(x) and backend.is_concrete(x))):
        return
    if len(x.shape) == 0:
        check(x)
        return
    for start in range(0, max(int(x.shape[0]), 1), rows):
        check(x[start : start + rows])


def call_arguments(method, model, args, kwargs):
    """The arguments of `method(model, *args, **kwargs)` by name (those passed), or {} when they
    do not bind (the method itself then says why)."""
    try:
        return inspect.signature(method).bind(model, *args, **kwargs).arguments
    except TypeError:
        return {}


def validation_inputs(validation_data):
    """The inputs (x) of `fit`'s validation_data: the array itself, or the first of a tuple."""
    if isinstance(validation_data, (tuple, list)):
        return validation_data[0] if validation_data else None
    return validation_data


def non_finite_problem(name="features"):
    """The message for NaN or Inf values among `name` (plural: "features", "latents")."""
    return f"{name.capitalize()} contain NaN or Inf values; clean the input."


FEATURE_PROBLEM = non_finite_problem("features")


def check_features(
    x: Tensor | np.ndarray,
    input_shape: int | Sequence[int],
    check_values: bool = True,
    name: str = "features",
) -> Tensor:
    """Validates a batch of real-valued features (or latents: `name`) and returns it as float32
    [B, prod(input_shape)] (flat).

    `input_shape`: one input's shape, or its width. Raises ValueError for another shape (or
    asserts on it in a graph, as `check_images`), and (unless `check_values` is False; eagerly,
    or as a failing graph assertion with the same message) for NaN or Inf values.
    """
    x = backend.as_tensor(x)
    if not _is_numeric(x):
        raise ValueError(f"{name.capitalize()} must be numeric; got dtype {backend.dtype_name(x)}.")
    shape = resolve_input_shape(input_shape)
    shapes = list(dict.fromkeys([(None, math.prod(shape)), (None,) + shape]))
    x = check_shape(
        ops.cast(x, "float32"),
        shapes,
        _expected_text(name, shape)
        if len(shape) > 1
        else f"Expected {name} of shape [batch, {shape[0]}]",
    )
    if not check_values:
        return x
    return enforce(x, [(lambda v: ops.all(ops.isfinite(v)), non_finite_problem(name))])


IMAGE_PROBLEMS = (
    "Images contain NaN or Inf values; clean the input.",
    (
        "Pixel values must lie in [0, 1]; divide uint8 images by 255 (and binarise them for a "
        "Bernoulli likelihood: tfp_vae.data.binarize_static)."
    ),
    (
        "Pixels must be binary (0 or 1) for a Bernoulli likelihood; binarise with "
        "tfp_vae.data.binarize_static (evaluation) or dynamic_binarize (training)."
    ),
)


def image_problem(x: Tensor, binary: bool = True) -> Tensor:
    """int32 scalar: 0 when the float32 pixels `x` are valid, else 1 + the index in
    `IMAGE_PROBLEMS` of the first check they fail (finite, in [0, 1], binary when `binary`).

    Plain tensor ops, so it compiles under XLA, which drops assertion ops: the fused training
    step computes it inside XLA and asserts on it outside (see `raise_on_problem`).
    """
    problem = ops.where(ops.all((x >= 0.0) & (x <= 1.0)), 0, 2)  # NaN fails both too.
    if binary:
        problem = ops.where(
            (problem == 0) & ops.logical_not(ops.all((x == 0.0) | (x == 1.0))), 3, problem
        )
    return ops.cast(ops.where(ops.all(ops.isfinite(x)), problem, 1), "int32")


def first_problem(codes):
    """The first non-zero of a list of int32 problem codes (scalars), or 0 when all are 0."""
    result = codes[-1]
    for code in reversed(codes[:-1]):
        result = ops.where(ops.not_equal(code, 0), code, result)
    return result


def raise_on_problem(value, problem: Tensor, messages: Sequence[str] = IMAGE_PROBLEMS):
    """Raises ValueError eagerly, or asserts in a graph, with `messages[problem - 1]` (`problem`
    from `image_problem` by default); returns `value`, a tensor or a structure of them (behind
    the assertion in a graph; unchecked inside `jax.jit`, see `assert_that`)."""
    if backend.is_concrete(problem):
        if int(problem):
            raise ValueError(messages[int(problem) - 1])
        return value
    if not backend.is_tensorflow():
        return value
    import tensorflow as tf

    message = tf.gather(tf.constant(("",) + tuple(messages)), problem)
    with tf.control_dependencies([tf.debugging.Assert(tf.equal(problem, 0), [message])]):
        return tf.nest.map_structure(tf.identity, value)


def enforce(value, checks):
    """Raises ValueError eagerly, or adds graph assertions, for each (predicate, message):
    the same message either way. Returns `value` (behind the assertions in a graph; unchecked
    inside `jax.jit`, see `assert_that`)."""
    if backend.is_concrete(value):
        for ok, message in checks:
            if not bool(ok(value)):
                raise ValueError(message)
        return value
    if not backend.is_tensorflow():
        return value
    import tensorflow as tf

    asserts = [tf.debugging.Assert(ok(value), [message]) for ok, message in checks]
    with tf.control_dependencies(asserts):
        return tf.identity(value)


def label_problems(num_classes: int = NUM_CLASSES) -> tuple[str, str]:
    """The messages of the label values' checks: (class index out of range, bad one-hot row)."""
    return (
        f"Labels must be class indices in 0..{num_classes - 1}; some are outside that range.",
        "One-hot labels must have exactly one 1 (and otherwise 0) per row.",
    )


def _labels_and_validity(y, num_classes):
    """Static checks of labels (ValueError), then (int32 class indices, bool scalar: whether
    their values are valid, index of the message in `label_problems`)."""
    y = backend.as_tensor(y)
    shape = backend.static_shape(y)
    rank = None if shape is None else len(shape)
    if rank == 2:
        if y.shape[-1] != num_classes:
            raise ValueError(
                f"One-hot labels must have {num_classes} columns (one per class); "
                f"got shape {tuple(y.shape)}."
            )
        if not _is_numeric(y, allow_bool=True):
            raise ValueError(f"Labels must be numeric; got dtype {backend.dtype_name(y)}.")
        y = ops.cast(y, "float32")
        ok = ops.all(((y == 0.0) | (y == 1.0)) & (ops.sum(y, -1, keepdims=True) == 1.0))
        return ops.cast(ops.argmax(y, axis=-1), "int32"), ok, 1
    if rank not in (0, 1):
        raise ValueError(
            f"Labels must be class indices of shape [batch] or one-hot rows of "
            f"shape [batch, {num_classes}]; got shape {tuple(y.shape)}."
        )
    if not _is_integer(y):
        raise ValueError(
            f"Class-index labels must have an integer dtype; got {backend.dtype_name(y)} "
            f"(pass one-hot rows as [batch, {num_classes}])."
        )
    y = ops.cast(y, "int32")
    return y, ops.all((y >= 0) & (y < num_classes)), 0


def check_labels(
    y: int | Tensor | np.ndarray, num_classes: int = NUM_CLASSES, check_values: bool = True
) -> Tensor:
    """Validates labels and returns them as int32 class indices (shape [] or [B]).

    Accepts integer class indices (a scalar or [B]) or one-hot rows [B, num_classes] (any
    numeric dtype). Raises ValueError for a one-hot of the wrong width, float labels that are
    not one-hot, other ranks, and (unless `check_values` is False: see `label_problem`) indices
    outside 0..num_classes-1 or rows that are not one-hot (eagerly, or as a failing graph
    assertion with the same message).
    """
    labels, ok, which = _labels_and_validity(y, num_classes)
    if not check_values:
        return labels
    return enforce(labels, [(lambda _: ok, label_problems(num_classes)[which])])


def label_problem(
    y: int | Tensor | np.ndarray, num_classes: int = NUM_CLASSES, offset: int = 0
) -> Tensor:
    """int32 scalar: 0 when the values of labels `y` are valid, else `offset` + 1 + the index in
    `label_problems` of the check they fail. Plain tensor ops (it compiles under XLA)."""
    _, ok, which = _labels_and_validity(y, num_classes)
    return ops.cast(ops.where(ok, 0, offset + 1 + which), "int32")


def labels_for(
    y: int | Tensor | np.ndarray,
    batch_size: int | Tensor,
    num_classes: int,
    check_values: bool = True,
) -> Tensor:
    """check_labels, then a scalar broadcast to [batch_size]; a [B] must match batch_size."""
    y = check_labels(y, num_classes, check_values)
    if not backend.is_tensorflow():  # JAX: every shape is static.
        if len(y.shape) == 0:
            return ops.full([int(batch_size)], y, dtype="int32")
        if y.shape[0] != int(batch_size):
            raise ValueError(
                f"Got {y.shape[0]} labels for a batch of {int(batch_size)}; pass one label "
                "per example (or a single label for all of them)."
            )
        return y
    import tensorflow as tf

    if y.shape.rank == 0:
        return tf.fill(tf.reshape(batch_size, [1]), y)
    static = tf.get_static_value(batch_size)
    if static is not None and y.shape[0] is not None and y.shape[0] != int(static):
        raise ValueError(
            f"Got {y.shape[0]} labels for a batch of {int(static)}; pass one label "
            "per example (or a single label for all of them)."
        )
    if static is None or y.shape[0] is None:
        with tf.control_dependencies(
            [
                tf.debugging.assert_equal(
                    tf.shape(y)[0], batch_size, message="One label per example is needed."
                )
            ]
        ):
            y = tf.identity(y)
    return y


# ---- inputs as a likelihood needs them (`tfp_vae.likelihoods.Likelihood.check` and `problem`) ---

# The messages of `Likelihood.problem`'s codes (1-based): the pixels', then NaN/Inf features.
INPUT_PROBLEMS = IMAGE_PROBLEMS + (FEATURE_PROBLEM,)
