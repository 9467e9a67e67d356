"""One definition of each model's parameters (`tfp_vae.models.params`): its table drives the
constructor's checks, `get_config`, bin/train's model flags and the run's settings."""

import math

import numpy as np
import pytest

from tfp_vae import models
from tfp_vae.cli import building, running
from tfp_vae.cli import train as train_cli
from tfp_vae.models import params

pytestmark = pytest.mark.unit  # In-process; the binary run below is integration.

# Small sizes, so that each model builds in a moment.
SMALL = {
    "vae": dict(z_dim=2, hidden=(4,)),
    "gmvae": dict(z_dim=2, hidden=(4,), k=3),
    "ssvae": dict(z_dim=2, hidden=(4,), classifier_hidden=(4,)),
    "m1m2": dict(z_dim=2, hidden=(4,), classifier_hidden=(4,)),
}
# Invalid values of every parameter that has a check (a new one fails
# test_every_checked_parameter_has_invalid_values until it is added here).
INVALID = {
    "seed": ["x", 2.5],
    "clip_norm": [0, -1.0, math.inf, "x"],
    "z_dim": [0, -3, 2.5, True, "two"],
    "beta": [-0.1, math.nan, math.inf, "x"],
    "objective": ["iwea", None],
    "iw": [0, 1.5],
    "hidden": [(4, 0), (4, 2.5), 5],
    "classifier_hidden": [(0,), 5],
    "activation": ["no_such_activation", 3],
    "classifier_activation": ["no_such_activation"],
    "min_variance": [-1e-3, math.nan],
    "init": ["he", None],
    "k": [0, 2.5],
    "learn_mixture_weights": ["false", 2, None],
    "num_classes": [1, 0, 2.5],
    "gen_weight": [-1.0, math.inf],
    "class_weight": [-1.0, math.nan],
    "labelled_bound": ["no", 2],
}


@pytest.fixture(scope="module")
def m1():
    return models.VAE(z_dim=3, hidden=(4,), seed=1)


def make(name, m1, **kwargs):
    arguments = {**SMALL[name], "seed": 5, **kwargs}
    cls = models.MODELS[name]
    return cls(m1, **arguments) if name == "m1m2" else cls(**arguments)


def test_tables_inherit_and_extend():
    """GMVAE adds k and learn_mixture_weights to the VAE's; M1M2 drops what M1 sets and adds
    m1 and feature_indices to the SSVAE's; every model has core.Model's seed and clip_norm."""
    table = {name: list(params.table(cls)) for name, cls in models.MODELS.items()}
    assert table["gmvae"] == table["vae"] + ["k", "learn_mixture_weights"]
    assert table["m1m2"] == [
        n for n in table["ssvae"] if n not in ("input_shape", "likelihood")
    ] + ["m1", "feature_indices"]
    assert all(t[:2] == ["seed", "clip_norm"] for t in table.values())
    # The defaults are the constructors' (the recipes' numbers).
    assert params.defaults(models.VAE)["z_dim"] == 10
    assert params.defaults(models.GMVAE)["k"] == 500
    assert params.defaults(models.SSVAE)["z_dim"] == 64
    assert params.defaults(models.M1M2)["class_weight"] == 100.0


@pytest.mark.parametrize("name", list(models.MODELS))
def test_get_config_is_the_table_and_round_trips(name, m1):
    model = make(name, m1, beta=0.5) if name in ("vae", "gmvae") else make(name, m1)
    config = model.get_config()
    keras_keys = {"name", "trainable", "dtype"}
    assert set(config) == keras_keys | set(params.table(type(model)))
    for key, value in SMALL[name].items():
        assert config[key] == (list(value) if isinstance(value, tuple) else value)
    assert config["seed"] == 5
    again = type(model).from_config(config)
    assert again.get_config() == config
    # Every parameter that the table checks is kept as checked.
    for key, param in params.table(type(model)).items():
        if param.check is not None:
            assert getattr(again, key) == getattr(model, key), key


def test_every_checked_parameter_has_invalid_values():
    checked = {
        key
        for cls in models.MODELS.values()
        for key, param in params.table(cls).items()
        if param.check is not None
    }
    assert checked == set(INVALID)


@pytest.mark.parametrize("name", list(models.MODELS))
def test_each_invalid_parameter_is_one_line_naming_it(name, m1):
    cls = models.MODELS[name]
    for key, param in params.table(cls).items():
        if param.check is None:
            continue
        for value in INVALID[key]:
            with pytest.raises(ValueError) as raised:
                make(name, m1, **{key: value})
            message = str(raised.value)
            assert "\n" not in message and key in message, (key, value, message)


def test_vae_z_dim_zero_is_one_line():
    with pytest.raises(ValueError, match=r"^z_dim must be a positive whole number; got 0\.$"):
        models.VAE(z_dim=0)


def test_checked_values_are_kept_in_their_type():
    model = models.GMVAE(z_dim=2.0, hidden=[4.0], k=np.int64(3), learn_mixture_weights=np.True_)
    assert (model.z_dim, model.hidden, model.k) == (2, (4,), 3)
    assert model.learn_mixture_weights is True and type(model.z_dim) is int


def test_every_parameter_flag_is_bin_trains_with_the_tables_default():
    """Each parameter a table marks as a flag has a bin/train flag of that name, whose default
    is None (the model's own), the model's default, or the table's `flag_default`."""
    flags = train_cli.FLAGS
    for cls in models.MODELS.values():
        defaults = params.defaults(cls)
        for key, param in params.table(cls).items():
            if not param.flag:
                continue
            assert key in flags, key
            default = flags[key].default
            if param.flag_default is not None:
                assert default == param.flag_default, key
            else:
                assert default is None or default == defaults[key], (cls.__name__, key, default)
    assert building.PARAMETER_FLAGS == tuple(
        dict.fromkeys(
            k for cls in models.MODELS.values() for k, p in params.table(cls).items() if p.flag
        )
    )
    assert all(name in flags for name in building.MODEL_FLAGS + running.RUN_FLAGS)


def test_run_flags_are_the_model_flags_but_those_that_take_effect_on_resume():
    model_flags = set(building.MODEL_FLAGS)
    assert model_flags - set(running.RUN_FLAGS) == {"clip_norm"}
    assert not params.table(models.VAE)["clip_norm"].run_defining
    # The checkpoints' settings keep their keys (runs started before this table resume).
    assert set(running.RUN_FLAGS) == {
        *("model", "likelihood", "m1_path", "k", "learn_mixture_weights", "active_threshold"),
        *("labels_per_class", "label_seed", "labelled_indices", "labelled_batch_size"),
        *("gen_weight", "class_weight", "labelled_bound", "labelled_binarization", "z_dim"),
        *("hidden", "arch", "beta", "objective", "iw", "batch_size", "binarization"),
        *("dataset", "seed", "mixed_precision", "ema_momentum", "lr_schedule"),
        *("validation_split", "validation_seed"),
    }


def _flag_defaults():
    return {name: train_cli.FLAGS[name].default for name in building.MODEL_FLAGS}


@pytest.mark.parametrize("name", list(models.MODELS))
def test_build_model_builds_each_model_from_its_settings(name, m1, tmp_path):
    settings = {**_flag_defaults(), "model": name, "seed": 3, "z_dim": 2, "clip_norm": 2.0}
    if name in ("vae", "gmvae"):
        settings.update(hidden=["5"], k=4, beta=0.5, objective="iwae", iw=2)
    else:
        settings.update(gen_weight=0.5, class_weight=7.0, labelled_bound=False)
    if name == "m1m2":
        m1.save(tmp_path / "m1.keras")
        settings.update(m1_path=str(tmp_path / "m1.keras"), active_threshold=0.0)
    model = building.build_model(None, settings, 1e-3, jit_compile=False)
    assert type(model) is models.MODELS[name]
    defaults = params.defaults(type(model))
    for key, param in params.table(type(model)).items():
        if param.flag:
            want = settings[key] if settings[key] is not None else defaults[key]
            got = model.get_config()[key] if key == "likelihood" else getattr(model, key)
            if key == "hidden":
                want = tuple(int(h) for h in want)
            assert got == want, (key, got, want)
    if name == "gmvae":
        assert model.k == 4 and model.objective == "iwae"
    if name == "m1m2":
        assert model.feature_indices == [0, 1, 2]


def test_build_model_refuses_bad_settings_in_one_line():
    from absl import app

    settings = {**_flag_defaults(), "model": "gmvae", "seed": 0, "k": 0}
    with pytest.raises(app.UsageError, match=r"^k \(mixture components\) must be"):
        building.build_model(None, settings, 1e-3, jit_compile=False)


def test_the_flag_tables_wait_for_tensorflow():
    """bin/train parses its flags before TensorFlow starts (one-line mistakes at once): its
    modules read the models' tables only when asked."""
    import os
    import subprocess
    import sys

    code = (
        "import sys\nfrom tfp_vae.cli import train, building, running\n"
        "assert 'tensorflow' not in sys.modules\n"
        "assert 'clip_norm' in building.MODEL_FLAGS and 'k' in running.RUN_FLAGS\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TFP_VAE_DEFER_IMPORT": "1", "PYTHONPATH": root}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow  # A binary that starts TensorFlow.
def test_bin_train_refuses_a_parameter_flag_the_model_does_not_take(tmp_path):
    from binaries import run as run_binary

    result = run_binary("train", "--model=vae", "--k=5", "--steps=2", f"--out_dir={tmp_path / 'r'}")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "--k: --model=vae has no such parameter" in result.stderr
    assert not (tmp_path / "r").exists()
