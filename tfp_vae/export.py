"""SavedModel export: named serving signatures that need only TensorFlow to load.

The graph holds plain TF ops (the TFP distributions are traced away), so
`tf.saved_model.load(path).signatures["elbo"](x=..., seed=...)` works in a process that never
imports tfp_vae or tensorflow_probability.

With `trainable=True` the SavedModel also trains itself: a `train_step` signature applies one
step of the model's own optimizer (its state, e.g. Adam's moments and iteration count, is saved
with the weights), so a host with only TensorFlow can continue training and re-save it:

    m = tf.saved_model.load(path)
    for x in batches:                                   # float32 [B, 784], binary pixels
        metrics = m.signatures["train_step"](x=x)      # loss, nelbo, kl, rec, ...
    tf.saved_model.save(m, new_path, signatures=m.signatures)

How the state is shared: `keras.export.ExportArchive` saves every variable that its endpoint
functions capture. All endpoints are traced from the same Python model, so they capture the same
underlying `tf.Variable`s (with the TensorFlow backend a Keras variable wraps one); the SavedModel
stores each once, and after loading `train_step` updates exactly the variables that `elbo`,
`encode`, ... read. The optimizer's variables are captured by `train_step` (and also exposed as
the collection `optimizer_variables`; a fixed learning rate as the variable `learning_rate`, so
`m.learning_rate.assign(1e-4)` changes it).
"""

import functools
import os
import shutil
import tempfile
import zipfile

import keras
import tensorflow as tf

from tfp_vae import files, signatures


def keras_path(path: str | os.PathLike) -> str:
    """Where the Keras model beside the SavedModel at `path` goes: `path` + ".keras"
    (savedmodels/vae -> savedmodels/vae.keras)."""
    return os.path.normpath(os.fspath(path)) + ".keras"


def export(
    model: keras.Model,
    path: str | os.PathLike,
    overwrite: bool = False,
    trainable: bool = False,
    verbose: bool = False,
    with_keras: bool = False,
) -> str:
    """Writes the serving signatures of `model` (`tfp_vae.signatures.serving_functions`) as a
    SavedModel at `path`.

    The first signature is also `serving_default`. Each signature declares its inputs' feature
    shapes with a dynamic batch (`signatures.declared_specs`) and runs the function traced with
    open specs, which checks every input's values itself; the loaded object's functions take
    the open specs (any shape reaches the package's check; see `add_endpoint`).

    The directory is written next to `path` and moved into place only when complete, so a
    failed export never leaves a half-written model or destroys the one that was there.
    `overwrite` replaces only a SavedModel directory: anything else at `path` (a training run,
    a file, other folders) is refused.

    Args:
      trainable: also write the training signatures (`signatures.training_functions`:
        `train_step`) and the optimizer's state, so that the SavedModel can be trained further
        with TensorFlow alone. The model must be compiled with an optimizer (a model from
        `keras.models.load_model` of a compiled model is; its optimizer state is restored).
      with_keras: also save the Keras model beside the SavedModel, at `keras_path(path)`
        (for `fit`, `keras.models.load_model`, `tfp_vae.pretrained` and the binaries, which take
        the SavedModel directory). It is refused, like the SavedModel, if it exists and
        `overwrite` is False.

    Raises:
      FileExistsError: `path` exists and `overwrite` is False, or it is not a SavedModel
        directory.
      ValueError: `trainable` and the model has no optimizer or cannot be trained this way.
    """
    path = os.fspath(path)
    check_target(path, overwrite)
    if with_keras:
        check_keras_target(path, overwrite)
    archive = keras.export.ExportArchive()
    archive.track(model)
    # `_tf_trackable` (private: what write_out saves) is checked by tests/test_framework_api.py,
    # which fails when Keras changes it.
    root = archive._tf_trackable
    # The archive lists the Keras variables, and saves the tf.Variables its functions capture
    # beside them: two copies of every weight on disk. Listing the tf.Variables themselves
    # (each Keras variable wraps one) makes both lists one object each, saved once.
    for name in ("variables", "trainable_variables", "non_trainable_variables"):
        setattr(root, name, [_tf_variable(v) for v in getattr(root, name)])
    endpoints = signatures.serving_functions(model)
    if trainable:
        optimizer = _built_optimizer(model)
        training = training_functions(model)
        clash = sorted(set(training) & set(endpoints))
        if clash:
            raise ValueError(f"Training signature names {clash} clash with serving signatures.")
        endpoints.update(training)
    declared = {}
    for name, (fn, signature) in endpoints.items():
        function = add_endpoint(archive, model, name, fn, signature)
        if function is not None:
            declared[name] = function
    declare_signatures(archive, declared)
    if trainable:
        archive.add_variable_collection(
            "optimizer_variables", [_tf_variable(v) for v in optimizer.variables]
        )
        learning_rate = optimizer.learning_rate  # The variable itself, unless a schedule.
        if isinstance(learning_rate, keras.Variable):
            # The tf.Variable itself (train_step captures it), so that after loading
            # `loaded.learning_rate.assign(1e-4)` changes the rate of the next steps.
            root.learning_rate = learning_rate.value
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FileExistsError(
            f"Cannot export to {path}: a part of its path is a file, not a folder."
        ) from None
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    old = partial = None
    try:
        if with_keras:  # Moved into place after the SavedModel, in one rename.
            handle, partial = tempfile.mkstemp(prefix=".export-", suffix=".keras", dir=parent)
            os.close(handle)
            model.save(partial)
            os.chmod(partial, 0o666 & ~files.umask())
        archive.write_out(staging, verbose=verbose)
        _write_description(model, staging, sorted(endpoints))
        os.chmod(staging, 0o777 & ~files.umask())  # mkdtemp's 0700 -> what os.makedirs would give.
        if os.path.lexists(path):
            # Two renames, so that at every instant `path` is the old or the new SavedModel.
            old = tempfile.mkdtemp(prefix=".export-old-", dir=parent)
            os.rename(path, os.path.join(old, "saved_model"))
        os.rename(staging, path)
        if partial is not None:
            os.replace(partial, keras_path(path))
    finally:
        for leftover in (staging, old):
            if leftover is not None and os.path.exists(leftover):
                shutil.rmtree(leftover)
        if partial is not None and os.path.exists(partial):
            os.remove(partial)
    return path


DESCRIPTION = os.path.join("assets.extra", "tfp_vae.json")


def _write_description(model: keras.Model, directory: str, names: list[str]) -> None:
    """`DESCRIPTION` in the SavedModel at `directory` (TensorFlow ignores assets.extra): what a
    server needs to prepare data as the model was trained and evaluated, with TensorFlow alone:
    the model's class, its likelihood, its data transforms (binarisation only for a Bernoulli),
    the shape of one input and the signatures."""
    import json

    likelihood = getattr(model, "data_likelihood", None)
    description = {
        "model": type(model).__name__,
        "likelihood": getattr(likelihood, "family", None),
        "data_transforms": getattr(model, "data_transforms", None),
        "data_shape": list(getattr(model, "data_shape", ()) or ()),
        "z_dim": getattr(model, "z_dim", None),
        "signatures": names,
    }
    os.makedirs(os.path.join(directory, "assets.extra"), exist_ok=True)
    with open(os.path.join(directory, DESCRIPTION), "w") as f:
        json.dump(description, f, indent=2, sort_keys=True)
        f.write("\n")


def add_endpoint(
    archive, model, name, fn, input_signature
) -> tf.types.experimental.ConcreteFunction | None:
    """Adds `fn` to `archive` as the endpoint `name` (the loaded object's function) and returns
    the SavedModel signature of that name, or None when it is the function's first trace.

    `input_signature` is a list of specs, or a list of such lists (`sample` with and without a
    seed: the loaded object's `sample(n=..., seed=...)` takes any of them). The loaded object's
    function is `fn` traced with these specs (open ones: any shape reaches the function's own
    check and its message, and [B, 28, 28] images are taken). The SavedModel's signature
    declares the first list's shapes (`signatures.declared_specs`: x [None, *data_shape], z
    [None, z_dim], ...; what `saved_model_cli show` and `structured_input_signature` state) and
    calls that same trace, so its graph still checks every input's values (`declare_signatures`
    makes it the signature).
    """
    lists = input_signature
    if not (lists and isinstance(lists[0], (list, tuple))):
        lists = [lists]
    lists = [list(specs) for specs in lists]
    if len(lists) == 1:
        endpoint = archive.add_endpoint(name, fn, input_signature=lists[0])
    else:
        endpoint = tf.function(fn, autograph=False)
        for specs in lists:
            endpoint.get_concrete_function(*specs)
        archive.add_endpoint(name, endpoint)
    declared = signatures.declared_specs(model, lists[0])
    if all(a is b for a, b in zip(declared, lists[0], strict=True)):
        return None  # Nothing to declare: the signature is the function's first trace.
    # Traced with the declared shapes, fn would check them at trace time only and drop the
    # graph's shape checks; the signature calls the open trace instead.
    body = endpoint.get_concrete_function(*lists[0])

    @functools.wraps(fn)  # The signature's input names are fn's arguments.
    def signature(*args, **kwargs):
        return body(*args, **kwargs)

    return tf.function(signature, autograph=False).get_concrete_function(*declared)


def declare_signatures(archive, functions: dict) -> None:
    """Makes `functions[name]` (a concrete function) the SavedModel signature of the endpoint
    `name` of `archive`, in place of the endpoint's first trace. `write_out` takes each
    signature from the archive's private `_get_concrete_fn` (checked by
    tests/test_framework_api.py); it is replaced on this archive only."""
    default = archive._get_concrete_fn

    def concrete_fn(endpoint):
        return functions[endpoint] if endpoint in functions else default(endpoint)

    archive._get_concrete_fn = concrete_fn


def _tf_variable(variable):
    """The tf.Variable behind a Keras variable (the TensorFlow backend wraps one), else the
    variable itself."""
    return variable.value if isinstance(variable, keras.Variable) else variable


# What `tf.saved_model.save` (and Keras' ExportArchive) put in a SavedModel directory.
SAVEDMODEL_ENTRIES = frozenset(
    {
        "saved_model.pb",
        "saved_model.pbtxt",
        "variables",
        "assets",
        "assets.extra",
        "fingerprint.pb",
        "keras_metadata.pb",
    }
)


def check_keras_target(path: str | os.PathLike, overwrite: bool = False) -> None:
    """FileExistsError unless the Keras model beside a SavedModel at `path` may be written at
    `keras_path(path)`: nothing is there, or (with `overwrite`) the Keras model an earlier export
    wrote beside the SavedModel that is there. A .keras file with no SavedModel beside it, or
    anything that is not a Keras model file, is the user's and is never replaced."""
    target = keras_path(path)
    if not os.path.lexists(target):
        return
    if not overwrite:
        raise FileExistsError(
            f"{target} already exists; choose another export path or pass "
            "overwrite=True (--overwrite) to replace an earlier export."
        )
    ours = (
        os.path.isfile(target)
        and not os.path.islink(target)
        and zipfile.is_zipfile(target)
        and os.path.isfile(os.path.join(path, "saved_model.pb"))
    )
    if not ours:
        raise FileExistsError(
            f"{target} exists and is not the Keras model of an earlier export "
            f"to {path}; overwrite replaces only that: choose another export "
            "path."
        )


def check_target(path: str | os.PathLike, overwrite: bool = False) -> None:
    """FileExistsError unless a SavedModel may be written at `path`: nothing is there, or
    (with `overwrite`) a SavedModel directory that holds nothing else."""
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise FileExistsError(
            f"{path} already exists; choose another path or pass "
            "overwrite=True (--overwrite) to replace it."
        )
    if os.path.islink(path) or not os.path.isdir(path):
        raise FileExistsError(
            f"{path} exists and is not a SavedModel directory; overwrite "
            "replaces only a SavedModel: choose another export path."
        )
    entries = set(os.listdir(path))
    other = sorted(entries - SAVEDMODEL_ENTRIES)
    if other or not entries & {"saved_model.pb", "saved_model.pbtxt"}:
        what = f"it holds {', '.join(other[:4])}" if other else "it has no saved_model.pb"
        raise FileExistsError(
            f"{path} is not a SavedModel directory ({what}); overwrite "
            "replaces only a SavedModel: choose another export path."
        )


def serving_functions(model: keras.Model) -> dict:
    """name -> (function, input_signature) of the serving signatures of `model`
    (`tfp_vae.signatures.serving_functions`)."""
    return signatures.serving_functions(model)


def training_functions(model: keras.Model) -> dict:
    """name -> (function, input_signature) of the training signatures of `model`
    (`tfp_vae.signatures.training_functions`: a LatentVariableModel's `train_step(x)`, the
    SSVAE's `train_step(unlabelled_x, labelled_x, labelled_y)`)."""
    return signatures.training_functions(model)


def _built_optimizer(model: keras.Model) -> keras.optimizers.Optimizer:
    """The model's optimizer, built on its trainable variables (so that its state exists before
    the train step is traced), or a ValueError saying how to get one."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise ValueError(
            "A trainable export needs the model's optimizer: compile the model "
            "(model.compile(keras.optimizers.Adam(1e-3))) or load a compiled one "
            "with keras.models.load_model before exporting with trainable=True."
        )
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "A trainable export needs the TensorFlow backend (KERAS_BACKEND="
            f"tensorflow); this is {keras.backend.backend()}."
        )
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return optimizer
