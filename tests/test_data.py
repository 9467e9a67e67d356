"""Tests for tfp_vae.data: IDX parsing, where the files are found, binarisation, pipelines.

Everything runs on small synthetic IDX/npz files written under tmp_path; HOME, KERAS_HOME and
Debian's /usr/share/datasets are redirected there and keras.utils.get_file is replaced, so
nothing touches the real ~/.keras, /usr/share/datasets or the network. Synthetic arrays stand in
for the published datasets by registering their checksums (`register_known`). Only the tests
at the end read the real data (and skip without it).
"""

import dataclasses
import gzip
import hashlib
import os
import re
import struct
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import data

pytestmark = pytest.mark.unit

STEMS = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


# --------------------------------------------------------------------------------------------
# Helpers: an independent IDX writer.


def idx_bytes(array):
    array = np.asarray(array, np.uint8)
    if array.ndim == 3:
        header = struct.pack(">IIII", 2051, *array.shape)
    elif array.ndim == 1:
        header = struct.pack(">II", 2049, array.shape[0])
    else:
        raise AssertionError(array.shape)
    return header + array.tobytes()


def write_bytes(path, raw, gz):
    path = str(path) + (".gz" if gz else "")
    with gzip.open(path, "wb") if gz else open(path, "wb") as f:
        f.write(raw)
    return path


def make_arrays(n_train=12, n_test=7, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def write_idx_set(directory, n_train=12, n_test=7, gz=True, seed=0, skip=()):
    """Writes the four IDX files into `directory` (created); returns the arrays."""
    os.makedirs(directory, exist_ok=True)
    arrays = make_arrays(n_train, n_test, seed)
    for key, stem in STEMS.items():
        if key not in skip:
            write_bytes(os.path.join(directory, stem), idx_bytes(arrays[key]), gz)
    return arrays


def write_npz(path, n_train=12, n_test=7, seed=0):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    arrays = make_arrays(n_train, n_test, seed)
    np.savez(path, **arrays)
    return arrays


def assert_same(ds, arrays):
    for key in STEMS:
        np.testing.assert_array_equal(getattr(ds, key), arrays[key])
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64


@pytest.fixture
def env(tmp_path, monkeypatch):
    """No $TFP_VAE_DATA_DIR; HOME, KERAS_HOME, the Debian datasets folder and the package's
    shipped datasets under tmp_path; get_file raising."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KERAS_HOME", str(home / ".keras"))
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    debian = tmp_path / "usr-share-datasets"
    monkeypatch.setattr(data, "DEBIAN_DATASETS", str(debian))
    shipped = tmp_path / "shipped"
    monkeypatch.setattr(data, "SHIPPED_DATASETS", str(shipped))
    calls = []

    def no_network(*args, **kwargs):
        calls.append((args, kwargs))
        raise RuntimeError("network disabled in tests")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    return types.SimpleNamespace(
        tmp=tmp_path,
        home=home,
        debian=debian,
        shipped=shipped,
        keras_cache=home / ".keras" / "datasets",
        calls=calls,
    )


def register_known(monkeypatch, name, arrays):
    """Makes `arrays` (make_arrays' dict) count as the published `name` dataset."""
    known = dict(data._KNOWN_DIGESTS)
    for key, array in arrays.items():
        known[hashlib.sha256(np.ascontiguousarray(array, np.uint8).tobytes()).hexdigest()] = (
            name,
            key,
        )
    monkeypatch.setattr(data, "_KNOWN_DIGESTS", known)


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# --------------------------------------------------------------------------------------------
# read_idx


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("kind", ["images", "labels"])
def test_read_idx_round_trip(tmp_path, gz, kind):
    rng = np.random.default_rng(1)
    array = (
        rng.integers(0, 256, (5, 28, 28)) if kind == "images" else rng.integers(0, 10, 9)
    ).astype(np.uint8)
    path = write_bytes(tmp_path / "f-idx-ubyte", idx_bytes(array), gz)
    out = data.read_idx(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)


def test_read_idx_non_square_images(tmp_path):
    array = np.arange(3 * 4 * 6, dtype=np.uint8).reshape(3, 4, 6)
    path = write_bytes(tmp_path / "rect", idx_bytes(array), gz=False)
    np.testing.assert_array_equal(data.read_idx(path), array)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_read_idx_bad_magic(tmp_path, gz):
    raw = struct.pack(">II", 1234, 3) + bytes(3)
    path = write_bytes(tmp_path / "badmagic", raw, gz)
    with pytest.raises(data.DataError, match="magic") as info:
        data.read_idx(path)
    assert path in str(info.value)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("kind", ["images", "labels"])
def test_read_idx_truncated_data(tmp_path, gz, kind):
    array = np.ones((4, 28, 28) if kind == "images" else (4,), np.uint8)
    path = write_bytes(tmp_path / "short", idx_bytes(array)[:-1], gz)
    with pytest.raises(data.DataError, match="truncated") as info:
        data.read_idx(path)
    assert path in str(info.value)


def test_read_idx_extra_bytes(tmp_path):
    path = write_bytes(tmp_path / "long", idx_bytes(np.ones(4, np.uint8)) + b"\0", gz=False)
    with pytest.raises(data.DataError) as info:
        data.read_idx(path)
    assert path in str(info.value)


@pytest.mark.parametrize(
    "raw",
    [b"", b"\0\0\x08", struct.pack(">III", 2051, 2, 28)],
    ids=["empty", "short-header", "short-image-header"],
)
def test_read_idx_truncated_header(tmp_path, raw):
    path = write_bytes(tmp_path / "hdr", raw, gz=False)
    with pytest.raises(data.DataError) as info:
        data.read_idx(path)
    assert path in str(info.value)


def test_read_idx_truncated_gzip(tmp_path):
    blob = gzip.compress(idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.DataError) as info:
        data.read_idx(str(path))
    assert str(path) in str(info.value)


def test_read_idx_corrupted_gzip_stream(tmp_path):
    """Damage inside the deflate stream raises zlib.error (not OSError/EOFError)."""
    blob = bytearray(gzip.compress(idx_bytes(np.zeros((3, 28, 28), np.uint8))))
    blob[10] |= 0x06  # First deflate block header -> block type 3, which is invalid.
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(data.DataError) as info:
        data.read_idx(str(path))
    assert str(path) in str(info.value)


def test_read_idx_gz_name_but_not_gzip(tmp_path):
    path = tmp_path / "plain.gz"
    path.write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(data.DataError) as info:
        data.read_idx(str(path))
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------------------------
# Directories and their contents


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_load_idx_directory(env, gz):
    arrays = write_idx_set(env.tmp / "mnist", gz=gz)
    ds = data.load(data_dir=str(env.tmp / "mnist"), download=False)
    assert_same(ds, arrays)
    assert ds.source == str(env.tmp / "mnist")
    assert ds.identified_as is None  # A user's own copy: accepted, but not the published one.
    suffix = ".gz" if gz else ""
    assert ds.files == {
        str(env.tmp / "mnist" / (stem + suffix)): sha256_of(env.tmp / "mnist" / (stem + suffix))
        for stem in STEMS.values()
    }


def test_load_idx_directory_dotted_names(env):
    """The other common spelling: train-images.idx3-ubyte."""
    directory = env.tmp / "dotted" / "mnist"
    directory.mkdir(parents=True)
    arrays = make_arrays()
    for key, stem in STEMS.items():
        write_bytes(directory / stem.replace("-idx", ".idx"), idx_bytes(arrays[key]), gz=False)
    assert_same(data.load(data_dir=str(directory), download=False), arrays)


@pytest.mark.parametrize("split", ["train", "test"])
def test_count_mismatch(env, split):
    directory = env.tmp / "mismatch"
    write_idx_set(directory)
    write_bytes(directory / STEMS["y_" + split], idx_bytes(np.zeros(3, np.uint8)), gz=True)
    with pytest.raises(data.DataError, match="labels") as info:
        data.load(data_dir=str(directory), download=False)
    assert str(directory) in str(info.value)


def test_labels_out_of_range(env):
    directory = env.tmp / "labels"
    write_idx_set(directory)
    write_bytes(directory / STEMS["y_test"], idx_bytes(np.full(7, 10, np.uint8)), gz=True)
    with pytest.raises(data.DataError, match=re.escape("0..9")):
        data.load(data_dir=str(directory), download=False)


def test_wrong_image_size(env):
    directory = env.tmp / "size"
    write_idx_set(directory)
    write_bytes(directory / STEMS["x_test"], idx_bytes(np.zeros((7, 27, 28), np.uint8)), gz=True)
    with pytest.raises(data.DataError, match="shape"):
        data.load(data_dir=str(directory), download=False)


def test_partial_directory_names_missing_files(env):
    directory = env.tmp / "partial"
    write_idx_set(directory, skip=("y_train", "x_test"))
    with pytest.raises(data.DataError) as info:
        data.load(data_dir=str(directory), download=False)
    message = str(info.value)
    assert STEMS["y_train"] in message and STEMS["x_test"] in message
    assert STEMS["x_train"] not in message and STEMS["y_test"] not in message
    assert str(directory) in message


def test_partial_directory_in_env_var_is_an_error_too(env, monkeypatch):
    """A broken set is reported, not silently skipped in favour of a later place."""
    write_idx_set(env.tmp / "env", skip=("y_test",))
    write_npz(env.keras_cache / "mnist.npz")
    monkeypatch.setenv(data.ENV_VAR, str(env.tmp / "env"))
    with pytest.raises(data.DataError, match=STEMS["y_test"]):
        data.load(download=False)


# --------------------------------------------------------------------------------------------
# Resolution order


def test_data_dir_beats_env_var_beats_keras_cache(env, monkeypatch):
    explicit = write_idx_set(env.tmp / "explicit" / "mnist", n_train=11, seed=1)
    from_env = write_idx_set(env.tmp / "env" / "mnist", n_train=13, seed=2)
    cached = write_npz(env.keras_cache / "mnist.npz", n_train=15, seed=3)
    monkeypatch.setenv(data.ENV_VAR, str(env.tmp / "env"))

    assert_same(data.load(data_dir=str(env.tmp / "explicit"), download=False), explicit)
    assert_same(data.load(download=False), from_env)
    monkeypatch.delenv(data.ENV_VAR)
    ds = data.load(download=False)
    assert_same(ds, cached)
    assert ds.source == str(env.keras_cache / "mnist.npz")
    assert not env.calls  # Nothing tried to download.


def test_keras_cache_follows_keras_home(env, monkeypatch):
    other = env.tmp / "other_keras_home"
    cached = write_npz(other / "datasets" / "mnist.npz", n_train=9)
    with pytest.raises(data.DataError):
        data.load(download=False)
    monkeypatch.setenv("KERAS_HOME", str(other))
    assert_same(data.load(download=False), cached)


def test_keras_cache_without_keras_home_uses_home(env, monkeypatch):
    monkeypatch.delenv("KERAS_HOME")
    cached = write_npz(env.home / ".keras" / "datasets" / "mnist.npz", n_train=8)
    assert_same(data.load(download=False), cached)


def test_keras_cache_idx_subfolder(env):
    arrays = write_idx_set(env.keras_cache / "fashion-mnist", n_train=10)
    assert_same(data.load("fashion_mnist", download=False), arrays)


@pytest.mark.parametrize(
    "name,sub",
    [("mnist", "mnist"), ("fashion_mnist", "fashion_mnist"), ("fashion_mnist", "fashion-mnist")],
)
def test_subfolder_named_after_dataset(env, name, sub):
    arrays = write_idx_set(env.tmp / "root" / sub, n_train=10)
    ds = data.load(name, data_dir=str(env.tmp / "root"), download=False)
    assert_same(ds, arrays)
    assert ds.source == str(env.tmp / "root" / sub)


def test_subfolder_beats_flat_files(env, monkeypatch):
    write_idx_set(env.tmp / "root", n_train=10, seed=1)
    sub = write_idx_set(env.tmp / "root" / "mnist", n_train=14, seed=2)
    monkeypatch.setenv(data.ENV_VAR, str(env.tmp / "root"))
    assert_same(data.load(download=False), sub)


def test_npz_in_subfolder(env):
    arrays = write_npz(env.tmp / "root" / "mnist" / "mnist.npz")
    assert_same(data.load(data_dir=str(env.tmp / "root"), download=False), arrays)


@pytest.mark.parametrize("exists", [True, False], ids=["empty-dir", "no-dir"])
def test_explicit_data_dir_without_data_is_an_error(env, monkeypatch, exists):
    """Even though $TFP_VAE_DATA_DIR and the Keras cache both hold the data."""
    write_idx_set(env.tmp / "env")
    write_npz(env.keras_cache / "mnist.npz")
    monkeypatch.setenv(data.ENV_VAR, str(env.tmp / "env"))
    explicit = env.tmp / "explicit"
    if exists:
        explicit.mkdir()
    with pytest.raises(data.DataError) as info:
        data.load(data_dir=str(explicit), download=True)
    assert str(explicit) in str(info.value)
    assert not env.calls


def test_nothing_found_names_every_place_and_the_download_error(env, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(env.tmp / "nowhere"))
    with pytest.raises(data.DataError) as info:
        data.load("mnist", download=True)
    message = str(info.value)
    assert env.calls, "the download was not attempted"
    for place in (
        str(env.tmp / "nowhere"),
        data.ENV_VAR,
        str(env.debian / "mnist"),
        str(env.keras_cache),
        "network disabled in tests",
        "--data_dir",
    ):
        assert place in message, (place, message)


def test_shipped_copy_after_keras_cache_before_download(env, monkeypatch):
    """MNIST shipped in the package: after every other place, before the download; never for
    Fashion-MNIST."""
    shipped = write_idx_set(env.shipped / "mnist", n_train=10, seed=1)
    register_known(monkeypatch, "mnist", shipped)
    ds = data.load("mnist", download=True)
    assert_same(ds, shipped)
    assert ds.source == str(env.shipped / "mnist") and ds.identified_as == "mnist"
    assert not env.calls
    cached = write_npz(env.keras_cache / "mnist.npz", n_train=15, seed=3)
    assert_same(data.load("mnist", download=True), cached)
    write_idx_set(env.shipped / "fashion_mnist", n_train=10, seed=2)
    with pytest.raises(data.DataError, match="download disabled"):
        data.load("fashion_mnist", download=False)


def test_damaged_shipped_copy_is_an_error(env, monkeypatch):
    """The shipped copy must be the published MNIST: a file whose checksum differs is refused,
    with the folder named, rather than silently read or passed over for a download."""
    register_known(monkeypatch, "mnist", make_arrays(n_train=10, seed=1))
    write_idx_set(env.shipped / "mnist", n_train=10, seed=4)  # Not the registered arrays.
    with pytest.raises(data.DataError, match="shipped with tfp_vae") as info:
        data.load("mnist", download=True)
    assert str(env.shipped / "mnist") in str(info.value) and "Reinstall" in str(info.value)
    assert not env.calls


def test_nothing_found_names_the_shipped_place(env):
    with pytest.raises(data.DataError) as info:
        data.load("mnist", download=False)
    assert f"shipped with tfp_vae: {env.shipped / 'mnist'} (no such directory)" in str(info.value)


def test_nothing_found_without_download(env):
    with pytest.raises(data.DataError) as info:
        data.load("fashion_mnist", download=False)
    message = str(info.value)
    assert not env.calls
    for place in (
        str(env.debian / "fashion_mnist"),
        str(env.debian / "fashion-mnist"),
        str(env.keras_cache),
        "download disabled",
    ):
        assert place in message, (place, message)


def test_unknown_dataset_name(env):
    with pytest.raises(ValueError, match="cifar"):
        data.load("cifar", download=False)


def test_download_is_the_last_resort(env, monkeypatch):
    downloaded = env.tmp / "downloaded" / "mnist.npz"
    arrays = write_npz(downloaded, n_train=6)
    requested = []

    def fake_get_file(fname, origin, **kwargs):
        requested.append((fname, origin))
        return str(downloaded)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    assert_same(data.load("mnist", download=True), arrays)
    assert requested and requested[0][0] == "mnist.npz"


def test_fashion_download_reads_where_get_file_wrote(env, monkeypatch):
    """Keras may cache somewhere other than $KERAS_HOME/datasets (it reads KERAS_HOME once, at
    import, and falls back to /tmp/.keras): the files must be read from where get_file put
    them."""
    keras_dir = env.tmp / "keras_elsewhere"
    arrays = make_arrays(n_train=5)
    stem_key = {stem: key for key, stem in STEMS.items()}

    def fake_get_file(fname, origin, cache_subdir="datasets", **kwargs):
        directory = keras_dir / cache_subdir
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / fname
        path.write_bytes(gzip.compress(idx_bytes(arrays[stem_key[fname[:-3]]])))
        return str(path)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    assert_same(data.load("fashion_mnist", download=True), arrays)


# --------------------------------------------------------------------------------------------
# npz


def test_npz_loading(env):
    arrays = write_npz(env.tmp / "npz" / "mnist.npz", n_train=10, n_test=4)
    ds = data.load(data_dir=str(env.tmp / "npz"), download=False)
    assert_same(ds, arrays)
    assert ds.source == str(env.tmp / "npz" / "mnist.npz")


def test_npz_missing_key(env):
    arrays = make_arrays()
    del arrays["y_test"]
    (env.tmp / "npz").mkdir()
    np.savez(env.tmp / "npz" / "mnist.npz", **arrays)
    with pytest.raises(data.DataError, match="y_test"):
        data.load(data_dir=str(env.tmp / "npz"), download=False)


def test_npz_damaged(env):
    (env.tmp / "npz").mkdir()
    (env.tmp / "npz" / "mnist.npz").write_bytes(b"PK\x03\x04 this is not a zip file")
    with pytest.raises(data.DataError, match=re.escape("mnist.npz")):
        data.load(data_dir=str(env.tmp / "npz"), download=False)


# --------------------------------------------------------------------------------------------
# Each dataset in its own place: asking for one never returns another


def test_debian_folder_is_searched(env):
    arrays = write_idx_set(env.debian / "fashion-mnist", n_train=9)
    ds = data.load("fashion_mnist", download=False)
    assert_same(ds, arrays)
    assert ds.source == str(env.debian / "fashion-mnist")


def test_unnamed_folder_with_the_published_files_is_accepted(env, monkeypatch):
    """A folder not named after the dataset: accepted when all four arrays are the published
    dataset's, whatever the compression (here uncompressed)."""
    arrays = write_idx_set(env.tmp / "somewhere", gz=False)
    register_known(monkeypatch, "mnist", arrays)
    ds = data.load("mnist", data_dir=str(env.tmp / "somewhere"), download=False)
    assert_same(ds, arrays)
    assert ds.identified_as == "mnist"
    assert set(ds.files) == {str(env.tmp / "somewhere" / stem) for stem in STEMS.values()}


def test_unnamed_folder_with_other_files_is_refused(env, monkeypatch):
    """Three published files and one of the user's: not the dataset, so not taken from a folder
    that is not named after it."""
    arrays = write_idx_set(env.tmp / "somewhere")
    register_known(monkeypatch, "mnist", arrays)
    write_bytes(
        env.tmp / "somewhere" / STEMS["x_test"], idx_bytes(make_arrays(seed=9)["x_test"]), gz=True
    )
    with pytest.raises(data.DataError) as info:
        data.load("mnist", data_dir=str(env.tmp / "somewhere"), download=False)
    message = str(info.value)
    assert "not the published MNIST" in message and "folder named mnist/" in message
    assert "\n" not in message
    # The same files in a folder named after the dataset: the user's own copy, accepted.
    os.rename(env.tmp / "somewhere", env.tmp / "mnist")
    ds = data.load("mnist", data_dir=str(env.tmp / "mnist"), download=False)
    assert ds.identified_as is None


@pytest.mark.parametrize("folder", ["mnist", "fashion_mnist", "fashion-mnist", "elsewhere"])
def test_fashion_mnist_is_never_mnist(env, monkeypatch, folder):
    """The issue's bug: --data_dir (or $TFP_VAE_DATA_DIR) at MNIST files gave MNIST for
    fashion_mnist. Files identified as another dataset are refused in any folder, named after
    the asked dataset or not, with a sentence saying which dataset they are."""
    arrays = write_idx_set(env.tmp / "root" / folder)
    register_known(monkeypatch, "mnist", arrays)
    directory = str(env.tmp / "root" / folder)
    with pytest.raises(data.DataError) as info:
        data.load("fashion_mnist", data_dir=directory, download=False)
    message = str(info.value)
    assert "holds MNIST, not Fashion-MNIST" in message and directory in message
    assert "\n" not in message
    if folder.startswith("fashion"):  # Through the root: its subfolder named after the dataset.
        with pytest.raises(data.DataError, match="holds MNIST, not Fashion-MNIST"):
            data.load("fashion_mnist", data_dir=str(env.tmp / "root"), download=False)
    if folder in ("mnist", "elsewhere"):  # And they are MNIST, when MNIST is asked for.
        assert data.load("mnist", data_dir=directory, download=False).identified_as == "mnist"


def test_one_swapped_file_is_refused_even_in_a_named_folder(env, monkeypatch):
    arrays = write_idx_set(env.tmp / "mnist")
    register_known(monkeypatch, "fashion_mnist", {"y_test": arrays["y_test"]})
    with pytest.raises(data.DataError) as info:
        data.load("mnist", data_dir=str(env.tmp / "mnist"), download=False)
    assert "holds Fashion-MNIST, not MNIST" in str(info.value)
    assert STEMS["y_test"] in str(info.value) and STEMS["x_train"] not in str(info.value)


def test_refused_places_are_passed_over_and_named(env, monkeypatch):
    """$TFP_VAE_DATA_DIR at MNIST, fashion_mnist asked: the search goes on to the next places;
    when none has it, the error names every place and why the MNIST files were refused."""
    mnist = write_idx_set(env.tmp / "shared" / "mnist")
    register_known(monkeypatch, "mnist", mnist)
    monkeypatch.setenv(data.ENV_VAR, str(env.tmp / "shared" / "mnist"))
    with pytest.raises(data.DataError) as info:
        data.load("fashion_mnist", download=False)
    message = str(info.value)
    for place in (
        data.ENV_VAR,
        str(env.tmp / "shared" / "mnist"),
        "holds MNIST, not Fashion-MNIST",
        str(env.debian / "fashion-mnist"),
        str(env.keras_cache),
        "download disabled",
    ):
        assert place in message, (place, message)
    fashion = write_idx_set(env.debian / "fashion-mnist", n_train=8, seed=5)
    ds = data.load("fashion_mnist", download=False)
    assert_same(ds, fashion)
    assert ds.source == str(env.debian / "fashion-mnist")
    assert_same(data.load("mnist", download=False), mnist)


def test_keras_npz_of_another_dataset_is_refused(env, monkeypatch):
    arrays = write_npz(env.tmp / "d" / "fashion_mnist.npz")
    register_known(monkeypatch, "mnist", arrays)
    with pytest.raises(data.DataError, match="holds MNIST, not Fashion-MNIST"):
        data.load("fashion_mnist", data_dir=str(env.tmp / "d"), download=False)


def test_downloaded_files_of_another_dataset_are_refused(env, monkeypatch):
    arrays = make_arrays(n_train=5)
    register_known(monkeypatch, "mnist", arrays)
    stem_key = {stem: key for key, stem in STEMS.items()}

    def fake_get_file(fname, origin, cache_subdir="datasets", **kwargs):
        directory = env.tmp / "dl" / cache_subdir
        directory.mkdir(parents=True, exist_ok=True)
        (directory / fname).write_bytes(gzip.compress(idx_bytes(arrays[stem_key[fname[:-3]]])))
        return str(directory / fname)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    with pytest.raises(data.DataError, match=r"refused: .* holds MNIST, not Fashion-MNIST"):
        data.load("fashion_mnist", download=True)


def test_checksums_identify_content_not_files(env, monkeypatch):
    """The same arrays as IDX .gz, plain IDX and a Keras npz are identified alike; `files` holds
    each file's own SHA-256."""
    arrays = write_idx_set(env.tmp / "a" / "gz")
    write_idx_set(env.tmp / "a" / "plain", gz=False)
    np.savez(env.tmp / "a" / "mnist.npz", **arrays)
    register_known(monkeypatch, "mnist", arrays)
    for source in ("gz", "plain"):
        ds = data.load("mnist", data_dir=str(env.tmp / "a" / source), download=False)
        assert ds.identified_as == "mnist"
        for path, digest in ds.files.items():
            assert os.path.isabs(path) and digest == sha256_of(path)
    ds = data.load("mnist", data_dir=str(env.tmp / "a"), download=False)
    assert ds.files == {str(env.tmp / "a" / "mnist.npz"): sha256_of(env.tmp / "a" / "mnist.npz")}
    assert ds.identified_as == "mnist"


def test_known_checksums_table():
    for name in data.DATASETS:
        assert set(data.KNOWN_DATASETS[name]) == set(STEMS)
    digests = [d for table in data.KNOWN_DATASETS.values() for d in table.values()]
    assert len(set(digests)) == 8 and all(len(d) == 64 for d in digests)


# --------------------------------------------------------------------------------------------
# A user's own npz: npz:PATH


def save(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_load_npz_uint8_with_labels(tmp_path):
    arrays = make_arrays(n_train=10, n_test=4)
    path = save(tmp_path / "mine.npz", **arrays, extra=np.zeros(3))
    for ds in (data.load_npz(path), data.load("npz:" + path, download=False)):
        assert_same(ds, arrays)
        assert ds.source == path and ds.has_labels and ds.identified_as is None
        assert ds.files == {path: sha256_of(path)}


def test_load_npz_relative_path(tmp_path, monkeypatch):
    arrays = make_arrays()
    save(tmp_path / "mine.npz", **arrays)
    monkeypatch.chdir(tmp_path)
    ds = data.load("npz:mine.npz")
    assert_same(ds, arrays)
    assert ds.files == {str(tmp_path / "mine.npz"): sha256_of(tmp_path / "mine.npz")}


def test_load_npz_without_labels(tmp_path):
    arrays = make_arrays(n_train=10, n_test=4)
    ds = data.load_npz(save(tmp_path / "x.npz", x_train=arrays["x_train"], x_test=arrays["x_test"]))
    np.testing.assert_array_equal(ds.x_train, arrays["x_train"])
    assert ds.y_train is None and ds.y_test is None and not ds.has_labels
    small = data.take_first(ds, 3, 2)
    assert small.x_train.shape == (3, 28, 28) and small.y_train is None
    assert next(iter(data.train_dataset(ds.x_train, 4, seed=0))).shape == (4, 784)


@pytest.mark.parametrize("form", ["flat", "channel", "float", "float16", "int64", "bool"])
def test_load_npz_converts_to_uint8_images(tmp_path, form):
    images = make_arrays(n_train=6, n_test=3)
    x = {k: images[k] for k in ("x_train", "x_test")}
    if form == "bool":
        x = {k: v > 127 for k, v in x.items()}
        expected = {k: (v.astype(np.uint8) * 255) for k, v in x.items()}
    else:
        expected = dict(x)
        convert = {
            "flat": lambda v: v.reshape(len(v), 784),
            "channel": lambda v: v[..., None],
            "float": lambda v: v / 255.0,
            "float16": lambda v: (v / 255.0).astype(np.float16),
            "int64": lambda v: v.astype(np.int64),
        }[form]
        x = {k: convert(v) for k, v in x.items()}
    ds = data.load_npz(save(tmp_path / "x.npz", **x))
    for key in ("x_train", "x_test"):
        got = getattr(ds, key)
        assert got.dtype == np.uint8 and got.shape[1:] == (28, 28)
        # float16 has 11 bits of mantissa: a pixel may round to a neighbouring level.
        np.testing.assert_allclose(got, expected[key], atol=1 if form == "float16" else 0)


def _bad_npz_cases():
    a = make_arrays(n_train=6, n_test=3)
    x = {"x_train": a["x_train"], "x_test": a["x_test"]}
    y = {"y_train": a["y_train"], "y_test": a["y_test"]}
    return {
        "no-x_test": ({"x_train": a["x_train"]}, "missing array"),
        "x-train-as-X": ({"X_train": a["x_train"], "x_test": a["x_test"]}, "X_train"),
        # Any image size or vector length is data (the models take the data's shape), but both
        # splits must share it; floats outside [0, 1] are real values, not intensities.
        "image-size": ({**x, "x_train": a["x_train"][:, :27]}, "both splits need one shape"),
        "one-image": ({**x, "x_test": a["x_test"][0]}, "both splits need one shape"),
        "one-axis": ({**x, "x_test": a["x_test"][0, 0]}, "x_test has shape \\[28\\]"),
        "float-range": ({**x, "x_train": a["x_train"] * 1.0}, "same kind of data"),
        "negative-float": ({**x, "x_test": a["x_test"] / 255.0 - 0.5}, "in \\[0, 1\\]"),
        "nan": ({**x, "x_train": np.full((6, 28, 28), np.nan)}, "NaN"),
        "int-range": ({**x, "x_train": a["x_train"].astype(np.int32) + 1}, "0..255"),
        "complex": ({**x, "x_test": a["x_test"].astype(np.complex64)}, "dtype complex64"),
        "strings": ({**x, "x_test": np.full((3, 28, 28), "a")}, "dtype <U1"),
        "empty-test": ({**x, "x_test": a["x_test"][:0]}, "test split is empty"),
        "one-label-array": ({**x, "y_train": a["y_train"]}, "y_train but no y_test"),
        "float-labels": ({**x, **y, "y_test": a["y_test"] * 1.0}, "labels must be integers"),
        "one-hot-labels": (
            {**x, **y, "y_train": np.eye(10)[a["y_train"]].astype(np.int64)},
            "not one-hot",
        ),
        "label-range": ({**x, **y, "y_test": np.full(3, 10)}, "labels outside 0..9"),
        "label-count": ({**x, **y, "y_train": a["y_train"][:5]}, "6 train images but 5 labels"),
        "object-array": ({**x, "x_test": np.array([None] * 3, dtype=object)}, "not numeric"),
    }


@pytest.mark.parametrize("case", sorted(_bad_npz_cases()))
def test_load_npz_bad_arrays_are_one_line_errors(tmp_path, case):
    arrays, match = _bad_npz_cases()[case]
    path = save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(data.DataError, match=match) as info:
        data.load("npz:" + path)
    message = str(info.value)
    assert "\n" not in message and path in message, message


@pytest.mark.parametrize("case", ["missing", "directory", "garbage", "npy", "truncated"])
def test_load_npz_bad_files_are_one_line_errors(tmp_path, case):
    path = tmp_path / "f.npz"
    if case == "directory":
        path.mkdir()
    elif case == "garbage":
        path.write_bytes(b"\x80\x04 not an npz, and never unpickled")
    elif case == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros((3, 28, 28), np.uint8))
    elif case == "truncated":
        save(path, **make_arrays())
        path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(data.DataError) as info:
        data.load_npz(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message


def test_load_npz_never_unpickles(tmp_path):
    """A pickled object array would run code on loading if pickles were allowed."""
    path = tmp_path / "evil.npz"
    np.savez(
        path,
        x_train=np.zeros((2, 28, 28), np.uint8),
        x_test=np.array([types.SimpleNamespace()], dtype=object),
    )
    with pytest.raises(data.DataError, match="not numeric"):
        data.load_npz(str(path))


def test_npz_name_mistakes(tmp_path):
    with pytest.raises(data.DataError, match="npz:PATH"):
        data.load("npz:")
    path = save(tmp_path / "x.npz", **make_arrays())
    with pytest.raises(data.DataError, match="does not apply"):
        data.load("npz:" + path, data_dir=str(tmp_path))
    with pytest.raises(data.DataError, match="npz:PATH"):
        data.load("emnist")


# --------------------------------------------------------------------------------------------
# Binarisation


def constant_images(n, seed=0):
    """n copies of one image whose pixels take many intensities (incl. 0 and 255)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    image.flat[:2] = (0, 255)
    return np.repeat(image[None], n, axis=0), image.reshape(-1) / 255.0


def test_binarize_static():
    images, probs = constant_images(4000)
    out = data.binarize_static(images, seed=5)
    assert out.dtype == np.float32 and out.shape == (4000, 784)
    assert set(np.unique(out)) <= {0.0, 1.0}
    np.testing.assert_array_equal(out, data.binarize_static(images, seed=5))
    assert not np.array_equal(out, data.binarize_static(images, seed=6))
    np.testing.assert_array_equal(
        data.binarize_static(images), data.binarize_static(images, data.STATIC_BINARIZATION_SEED)
    )
    # Per-pixel frequencies match intensity / 255 (5 standard errors, plus float slack).
    freq = out.mean(axis=0)
    tol = 5 * np.sqrt(probs * (1 - probs) / len(out)) + 1e-6
    assert np.all(np.abs(freq - probs) <= tol)
    assert np.all(out[:, 0] == 0) and np.all(out[:, 1] == 1)
    assert abs(out.mean() - probs.mean()) < 0.005


def test_flatten():
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    out = data.flatten(images)
    assert out.dtype == np.float32 and out.shape == (3, 784)
    np.testing.assert_allclose(out, images.reshape(3, -1).astype(np.float64) / 255, rtol=1e-6)
    assert data.flatten(np.zeros((0, 28, 28), np.uint8)).shape == (0, 784)


@pytest.mark.parametrize("seed", [None, 3])
def test_dynamic_binarize(seed, keras_seed):
    images, probs = constant_images(2000)
    batch = tf.constant(images.reshape(2000, 784))
    a = data.dynamic_binarize(batch, seed).numpy()
    b = data.dynamic_binarize(batch, seed).numpy()
    assert a.dtype == np.float32 and a.shape == (2000, 784)
    assert set(np.unique(a)) <= {0.0, 1.0}
    assert not np.array_equal(a, b)  # A fresh draw every call.
    for out in (a, b):
        freq = out.mean(axis=0)
        assert np.all(np.abs(freq - probs) <= 5 * np.sqrt(probs * (1 - probs) / 2000) + 1e-6)
        assert np.all(out[:, 0] == 0) and np.all(out[:, 1] == 1)


# --------------------------------------------------------------------------------------------
# Pipelines


def rows_of(array):
    return {row.tobytes() for row in np.asarray(array, np.float32)}


@pytest.mark.parametrize("n", [50, 5], ids=["several-batches", "fewer-than-a-batch"])
def test_train_dataset_dynamic(n, keras_seed):
    images = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = 0, 255
    ds = data.train_dataset(images, batch_size=16, seed=1)
    assert ds.cardinality().numpy() == tf.data.INFINITE_CARDINALITY
    batches = [b.numpy() for b in ds.take(12)]  # Several passes over the data.
    for b in batches:
        assert b.dtype == np.float32 and b.shape == (16, 784)
        assert set(np.unique(b)) <= {0.0, 1.0}
        assert np.all(b[:, 0] == 0) and np.all(b[:, 1] == 1)
    everything = np.concatenate(batches)
    assert abs(everything.mean() - images.mean() / 255) < 0.01


def test_train_dataset_epochs_are_permutations_and_seeded():
    images = np.arange(48, dtype=np.uint8).repeat(784).reshape(48, 28, 28)  # Row i is all i.
    ds = data.train_dataset(images, batch_size=8, binarization="none", seed=3)
    first = [b.numpy()[:, 0] * 255 for b in ds.take(12)]  # Two epochs of 6 batches.
    for epoch in (first[:6], first[6:]):
        np.testing.assert_allclose(np.sort(np.concatenate(epoch)), np.arange(48), atol=1e-4)
    assert not np.array_equal(np.concatenate(first[:6]), np.concatenate(first[6:]))
    again = [
        b.numpy()[:, 0] * 255
        for b in data.train_dataset(images, batch_size=8, binarization="none", seed=3).take(12)
    ]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    other = data.train_dataset(images, batch_size=8, binarization="none", seed=4)
    assert not np.array_equal(next(iter(other)).numpy(), next(iter(ds)).numpy())
    dyn = [list(data.train_dataset(images, 8, seed=5).take(3)) for _ in range(2)]
    np.testing.assert_array_equal(np.stack(dyn[0]), np.stack(dyn[1]))  # Binarisation seeded too.


@pytest.mark.parametrize("binarization", ["static", "none"])
def test_train_dataset_static_and_none(binarization):
    images = np.random.default_rng(0).integers(0, 256, (37, 28, 28), dtype=np.uint8)
    expected = data.binarize_static(images) if binarization == "static" else data.flatten(images)
    ds = data.train_dataset(images, batch_size=8, binarization=binarization, seed=0)
    seen = []
    for b in ds.take(10):
        b = b.numpy()
        assert b.dtype == np.float32 and b.shape == (8, 784)
        seen.extend(b)
    # Every row is one of the expected rows, and 80 rows from 37 images cover all of them.
    assert rows_of(seen) == rows_of(expected)


def test_train_dataset_bad_binarization():
    with pytest.raises(ValueError, match="binarization"):
        data.train_dataset(np.zeros((4, 28, 28), np.uint8), 2, binarization="otsu")


def test_eval_dataset_covers_everything_once():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (23, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 23)
    batches = list(data.eval_dataset(images, batch_size=5, labels=labels))
    assert [len(x) for x, _ in batches] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(
        np.concatenate([x.numpy() for x, _ in batches]), data.binarize_static(images)
    )
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in batches]), labels)
    # Without labels; grayscale.
    x = np.concatenate([b.numpy() for b in data.eval_dataset(images, 10, binarization="none")])
    np.testing.assert_allclose(x, images.reshape(23, -1) / 255.0, rtol=1e-6)
    assert x.dtype == np.float32


def test_eval_dataset_bad_binarization():
    with pytest.raises(ValueError, match="binarization"):
        data.eval_dataset(np.zeros((4, 28, 28), np.uint8), 2, binarization="dynamic")


def test_empty_images_raise():
    empty = np.zeros((0, 28, 28), np.uint8)
    with pytest.raises(data.DataError, match="empty"):
        data.train_dataset(empty, 4)
    with pytest.raises(data.DataError, match="empty"):
        data.eval_dataset(empty, 4)


def test_take_first():
    ds = data.ImageDataset(**make_arrays(10, 6), source="x")
    small = data.take_first(ds, 3, 2)
    assert small.x_train.shape == (3, 28, 28) and small.y_test.shape == (2,)
    np.testing.assert_array_equal(small.x_train, ds.x_train[:3])
    assert small.source == "x"


# --------------------------------------------------------------------------------------------
# labelled_subset


def test_labelled_subset():
    labels = np.random.default_rng(0).integers(0, 10, 600)
    labelled, unlabelled = data.labelled_subset(labels, per_class=7, seed=3)
    assert len(labelled) == 70
    np.testing.assert_array_equal(np.bincount(labels[labelled], minlength=10), np.full(10, 7))
    assert len(np.intersect1d(labelled, unlabelled)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([labelled, unlabelled])), np.arange(600))
    assert len(np.unique(labelled)) == 70
    again = data.labelled_subset(labels, per_class=7, seed=3)
    np.testing.assert_array_equal(again[0], labelled)
    np.testing.assert_array_equal(again[1], unlabelled)
    other = data.labelled_subset(labels, per_class=7, seed=4)
    assert not np.array_equal(other[0], labelled)


def test_labelled_subset_class_too_small():
    labels = np.repeat(np.arange(10), 5)
    labels[labels == 6] = 7  # Class 6 is gone.
    labelled, _ = data.labelled_subset(labels, per_class=5, seed=0, num_classes=6)
    assert len(labelled) == 30
    with pytest.raises(data.DataError, match="Class 6"):
        data.labelled_subset(labels, per_class=1, seed=0)
    with pytest.raises(data.DataError, match="Class 0"):
        data.labelled_subset(np.repeat(np.arange(10), 5), per_class=6, seed=0)


# --------------------------------------------------------------------------------------------
# split_validation


def _distinct_dataset(n_train=200, n_test=7):
    """Training images that each hold their row number (pixel 0 and 1), so a row names itself."""
    arrays = make_arrays(n_train, n_test)
    rows = np.arange(n_train)
    arrays["x_train"][:, 0, 0], arrays["x_train"][:, 0, 1] = rows % 256, rows // 256
    return data.ImageDataset(**arrays, source="x")


def _rows(x):
    return x[:, 0, 0].astype(np.int64) + 256 * x[:, 0, 1].astype(np.int64)


def test_split_validation_holds_out_disjoint_seeded_rows_with_their_labels():
    ds = _distinct_dataset()
    split = data.split_validation(ds, 30, seed=5)
    train, val = _rows(split.x_train), _rows(split.x_validation)
    assert (len(train), len(val)) == (170, 30)
    assert not np.intersect1d(train, val).size
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(200))
    # The rows keep their order, their labels and their recorded indices.
    np.testing.assert_array_equal(train, split.train_indices)
    np.testing.assert_array_equal(val, split.validation_indices)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    np.testing.assert_array_equal(split.y_train, ds.y_train[train])
    np.testing.assert_array_equal(split.y_validation, ds.y_train[val])
    np.testing.assert_array_equal(split.x_validation, ds.x_train[val])
    # The test set is untouched; the same seed holds out the same rows, another seed others.
    assert split.x_test is ds.x_test and split.y_test is ds.y_test
    np.testing.assert_array_equal(data.split_validation(ds, 30, seed=5).validation_indices, val)
    assert not np.array_equal(data.split_validation(ds, 30, seed=6).validation_indices, val)
    # A fraction of the training set, rounded; the loaded dataset is not changed.
    assert len(data.split_validation(ds, 0.1).x_validation) == 20
    assert len(data.split_validation(ds, 0.001).x_validation) == 1
    assert ds.x_validation is None and len(ds.x_train) == 200
    # No labels: none for the validation rows either.
    unlabelled = data.split_validation(data.ImageDataset(ds.x_train, None, ds.x_test, None, "x"), 5)
    assert unlabelled.y_train is None and unlabelled.y_validation is None


@pytest.mark.parametrize(
    "validation, message",
    [
        (-1, "count >= 0"),
        (200, "holds out 200 of the 200"),
        (1.5, "neither a whole count"),
        (float("nan"), "count >= 0"),
        ("10", "a count of examples or a fraction"),
        (True, "a count of examples or a fraction"),
    ],
)
def test_split_validation_refuses_sizes_out_of_range_in_one_line(validation, message):
    with pytest.raises(data.DataError, match=re.escape(message)) as raised:
        data.split_validation(_distinct_dataset(), validation)
    assert "\n" not in str(raised.value)


def test_split_validation_of_none_and_twice():
    ds = _distinct_dataset()
    whole = data.split_validation(ds, 0)
    np.testing.assert_array_equal(whole.x_train, ds.x_train)
    assert len(whole.x_validation) == 0
    with pytest.raises(data.DataError, match="already holds a validation split"):
        data.split_validation(whole, 5)


def test_labelled_examples_come_from_the_rows_trained_on():
    """The semi-supervised labelled set is drawn from the split's training part (never a
    validation row) and, without a split, is the one drawn from the whole set as before."""
    from tfp_vae import semisupervised

    ds = _distinct_dataset(600)
    ds = dataclasses.replace(ds, y_train=np.arange(600) % 10)
    whole_labelled, _ = semisupervised.split_labelled(ds.y_train, 10, label_seed=0)
    np.testing.assert_array_equal(
        whole_labelled, data.labelled_subset(ds.y_train, 10, seed=0)[0]
    )  # Unchanged when there is no split.
    for seed in range(5):
        split = data.split_validation(ds, 300, seed=seed)
        labelled, _ = semisupervised.split_labelled(split.y_train, 10, label_seed=0)
        rows = _rows(split.x_train[labelled])
        assert len(rows) == 100 and not np.intersect1d(rows, split.validation_indices).size
        np.testing.assert_array_equal(split.y_train[labelled], ds.y_train[rows])
    # Indices of the loaded training set map to the training part's rows, or are refused.
    kept, held = split.train_indices[:3], split.validation_indices[:2]
    positions = data.train_positions(split, kept)
    np.testing.assert_array_equal(_rows(split.x_train[positions]), kept)
    np.testing.assert_array_equal(data.train_positions(ds, [4, 2]), [4, 2])
    with pytest.raises(data.DataError, match="held out for validation"):
        data.train_positions(split, np.concatenate([kept, held]))
    with pytest.raises(data.DataError, match=r"must lie in 0\.\.599; got \[600\]"):
        data.train_positions(split, np.array([kept[0], 600]))


# --------------------------------------------------------------------------------------------
# The real thing


def test_real_mnist_is_found_with_nothing_set(tmp_path, monkeypatch):
    """No variable, an empty Keras cache, no download: the copy shipped in the package."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(data, "DEBIAN_DATASETS", str(tmp_path / "usr-share-datasets"))
    ds = data.load("mnist", download=False)
    assert ds.source == os.path.join(data.SHIPPED_DATASETS, "mnist")
    assert ds.identified_as == "mnist" and ds.x_train.shape == (60000, 28, 28)


@pytest.mark.integration
def test_real_mnist(mnist):
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_train.dtype == np.uint8
    assert mnist.x_test.shape == (10000, 28, 28)
    assert mnist.y_train.shape == (60000,) and mnist.y_test.shape == (10000,)
    np.testing.assert_array_equal(np.unique(mnist.y_train), np.arange(10))
    np.testing.assert_array_equal(np.unique(mnist.y_test), np.arange(10))
    assert abs(mnist.x_train.mean() / 255.0 - 0.1307) < 5e-4
    # Every class has thousands of training examples.
    assert np.bincount(mnist.y_train).min() > 5000


# The real Fashion-MNIST: Debian's dataset-fashion-mnist (.ci/run installs it).
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
needs_fashion = pytest.mark.skipif(
    not os.path.isdir(FASHION_DIR),
    reason=f"{FASHION_DIR} is missing (apt install dataset-fashion-mnist)",
)


@needs_fashion
@pytest.mark.integration
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    ds = data.load("fashion_mnist", download=False)
    assert ds.source == FASHION_DIR and ds.identified_as == "fashion_mnist"
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(ds.y_test), np.full(10, 1000))
    assert abs(ds.x_train.mean() / 255.0 - 0.2860) < 5e-4  # Fashion-MNIST's (MNIST: 0.1307).
    assert ds.files == {
        os.path.join(FASHION_DIR, stem + ".gz"): sha256_of(os.path.join(FASHION_DIR, stem + ".gz"))
        for stem in STEMS.values()
    }


@needs_fashion
@pytest.mark.integration
def test_real_fashion_mnist_is_refused_as_mnist(tmp_path):
    with pytest.raises(data.DataError) as info:
        data.load("mnist", data_dir=FASHION_DIR, download=False)
    assert "holds Fashion-MNIST, not MNIST" in str(info.value)
    # A copy in a folder named after neither is recognised by its content.
    os.mkdir(tmp_path / "copy")
    for stem in STEMS.values():
        os.symlink(os.path.join(FASHION_DIR, stem + ".gz"), tmp_path / "copy" / (stem + ".gz"))
    ds = data.load("fashion_mnist", data_dir=str(tmp_path / "copy"), download=False)
    assert ds.identified_as == "fashion_mnist"


@pytest.mark.integration
def test_real_mnist_is_refused_as_fashion_mnist(mnist, tmp_path, monkeypatch):
    """The issue's reproduction: $TFP_VAE_DATA_DIR (or --data_dir) at the MNIST folder."""
    assert mnist.identified_as == "mnist"
    mnist_dir = os.path.dirname(next(iter(mnist.files)))
    with pytest.raises(data.DataError, match="holds MNIST, not Fashion-MNIST"):
        data.load("fashion_mnist", data_dir=mnist_dir, download=False)
    # Even in a folder named fashion_mnist.
    os.mkdir(tmp_path / "fashion_mnist")
    for path in mnist.files:
        for part in data.split_parts(path) or [path]:  # The shipped copy keeps one in parts.
            os.symlink(part, tmp_path / "fashion_mnist" / os.path.basename(part))
    with pytest.raises(data.DataError, match="holds MNIST, not Fashion-MNIST"):
        data.load("fashion_mnist", data_dir=str(tmp_path), download=False)
    # Through the environment variable: MNIST passed over, the real Fashion-MNIST (if
    # installed) found, never MNIST.
    monkeypatch.setenv(data.ENV_VAR, mnist_dir)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    if os.path.isdir(FASHION_DIR):
        fashion = data.load("fashion_mnist", download=False)
        assert fashion.identified_as == "fashion_mnist"
        assert not np.array_equal(fashion.x_test, mnist.x_test)
    else:
        with pytest.raises(data.DataError, match="holds MNIST, not Fashion-MNIST"):
            data.load("fashion_mnist", download=False)


def test_a_keras_npz_without_labels_names_what_it_needs(tmp_path):
    """A Keras-style mnist.npz needs all four arrays: the message asks for them, nothing else."""
    a = make_arrays(n_train=6, n_test=3)
    path = save(tmp_path / "mnist.npz", x_train=a["x_train"], x_test=a["x_test"])
    with pytest.raises(data.DataError, match=r"missing array\(s\) \['y_train', 'y_test'\]") as e:
        data._load_npz(path)
    assert "optionally" not in str(e.value), e.value
