"""Pictures: the matplotlib figures (tfp_vae.plots), bin/plot, and the TensorBoard images and
per-step scalars of training.fit. Tiny untrained models and random binary images: the tests
check what is drawn and written, not how good it looks."""

import glob
import os
import sys

import binaries
import keras
import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("matplotlib", reason='the figures need matplotlib: pip install -e ".[plots]"')

from tfp_vae import data, plots, semisupervised, training
from tfp_vae.models import GMVAE, M1M2, SSVAE, VAE

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


def _images(n, seed=0):
    return (np.random.default_rng(seed).random((n, 784)) < 0.3).astype(np.float32)


@pytest.fixture(scope="module")
def vae():
    keras.utils.set_random_seed(0)
    return VAE(z_dim=3, hidden=(16,))


@pytest.fixture(scope="module")
def ssvae():
    keras.utils.set_random_seed(0)
    return SSVAE(z_dim=3, hidden=(16,), classifier_hidden=(16,))


def _labels(ax):
    return [t.get_text() for t in ax.get_yticklabels()]


def test_interpolations(vae, ssvae, tmp_path):
    x = _images(6)
    figure = plots.interpolations(vae, x[:3], x[3:], steps=5)
    left, middle, right = figure.axes
    assert (left.get_title(), right.get_title()) == ("A", "B")
    assert "\u03bc(A)" in middle.get_title() and middle.get_xlabel() == "t"
    assert [t.get_text() for t in middle.get_xticklabels()] == ["0", "0.25", "0.5", "0.75", "1"]
    # One row of 5 decoded images per pair: the canvas is 3 cells high, 5 wide (29 px a cell).
    assert middle.get_images()[0].get_array().shape == (3 * 29 + 1, 5 * 29 + 1)
    assert "interpolations" in figure.get_suptitle()
    # A class-conditional model labels each row with the classes it decodes.
    rows = _labels(plots.interpolations(ssvae, x[:3], x[3:]).axes[0])
    assert len(rows) == 3 and all(r.startswith("y: ") for r in rows)
    path = plots.save(figure, str(tmp_path / "i.png"))
    assert open(path, "rb").read(8) == PNG
    with pytest.raises(ValueError, match="as many images"):
        plots.interpolations(vae, x[:3], x[3:5])


def test_traversals_choose_the_most_active_units(tmp_path):
    keras.utils.set_random_seed(1)
    model = VAE(z_dim=12, hidden=(16,))
    x = _images(40)
    figure = plots.traversals(model, x, max_dims=4)
    image, grid = figure.axes
    assert "4 most active of 12" in figure.get_suptitle()
    assert "largest variance" in figure.get_suptitle()
    means, _ = plots.posterior_means(model, x)
    top = np.argsort(-means.var(axis=0))[:4]
    assert [r.split()[0] for r in _labels(grid)] == [f"z{d}" for d in top]
    assert len(grid.get_xticklabels()) == 9 and image.get_title() == "input"
    # Few units: all of them, in order; chosen ones as asked.
    small = plots.traversals(VAE(z_dim=3, hidden=(16,)), x[:5], values=[-1, 0, 1])
    assert [r.split()[0] for r in _labels(small.axes[1])] == ["z0", "z1", "z2"]
    assert "all 3 latent units" in small.get_suptitle()
    assert len(plots.traversals(model, x[:1], dims=[5, 2]).axes[1].get_yticklabels()) == 2
    with pytest.raises(ValueError, match="several images"):
        plots.traversals(model, x[:1])


def test_latent_map_pca_and_legend(vae, ssvae):
    x, y = _images(50), np.arange(50) % 10
    figure = plots.latent_map(vae, x, y)
    (ax,) = figure.axes
    assert ax.get_xlabel().startswith("PC1 (") and "% of the variance" in ax.get_xlabel()
    assert ax.get_ylabel().startswith("PC2 (")
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [str(k) for k in range(10)]
    assert "PCA" in ax.get_title()
    # The two components' shares are those of the SVD of the centred means.
    means, _ = plots.posterior_means(vae, x)
    share = np.linalg.svd(means - means.mean(0), compute_uv=False) ** 2
    assert f"{share[0] / share.sum():.1%}" in ax.get_xlabel()
    # Class names label the legend; z_dim = 2 is shown as it is; no labels, no legend.
    named = plots.latent_map(ssvae, x, y, class_names=plots.class_names("fashion_mnist"))
    assert named.axes[0].get_legend().get_texts()[0].get_text() == "T-shirt/top"
    flat = plots.latent_map(VAE(z_dim=2, hidden=(8,)), x).axes[0]
    assert (flat.get_xlabel(), flat.get_ylabel()) == ("z0", "z1") and flat.get_legend() is None


@pytest.mark.parametrize("stacked", [False, True])
def test_class_grid_rows_are_classes(ssvae, stacked):
    model = ssvae
    if stacked:
        keras.utils.set_random_seed(2)
        model = M1M2(VAE(z_dim=4, hidden=(8,)), z_dim=2, hidden=(8,), classifier_hidden=(8,))
    figure = plots.class_grid(model, 6, seed=3)
    (ax,) = figure.axes
    assert _labels(ax) == [str(k) for k in range(10)]
    assert len(ax.get_xticklabels()) == 6 and ax.get_ylabel() == "class y"
    assert ax.get_images()[0].get_array().shape == (10 * 29 + 1, 6 * 29 + 1)
    names = plots.class_names("fashion_mnist")
    assert _labels(plots.class_grid(model, 2, class_names=names).axes[0]) == list(names)


def test_class_grid_refuses_an_unconditional_model(vae):
    assert "class_grid" not in plots.kinds_for(vae)
    with pytest.raises(ValueError, match="has no classes"):
        plots.class_grid(vae)


def test_reconstructions(vae, ssvae, tmp_path):
    for model in (vae, ssvae):
        figure = plots.reconstructions(model, _images(10).reshape(10, 28, 28), columns=4)
        inputs, outputs = figure.axes
        assert (inputs.get_title(), outputs.get_title()) == ("input", "reconstruction")
        assert "Reconstructions" in figure.get_suptitle()
        # 10 images in rows of 4: 3 rows, the last with two empty cells; both panels alike.
        for ax in figure.axes:
            assert ax.get_images()[0].get_array().shape == (3 * 29 + 1, 4 * 29 + 1)
        path = tmp_path / f"{type(model).__name__}.png"
        plots.save(figure, str(path))
        assert path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_manifold_decodes_the_prior_quantiles(vae, ssvae):
    keras.utils.set_random_seed(3)
    model = VAE(z_dim=2, hidden=(16,))
    assert "manifold" in plots.kinds_for(model)
    figure = plots.manifold(model, n=6)
    (ax,) = figure.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("z0", "z1")
    assert ax.get_images()[0].get_array().shape == (6 * 29 + 1, 6 * 29 + 1)
    # The grid is at the quantiles (i + 1/2) / n of N(0, 1), z1 growing upwards.
    exact = tfp_normal_quantiles(6)
    q = plots.prior_quantiles(model, 6)
    np.testing.assert_allclose(q, np.stack([exact, exact], 1), atol=0.05)
    x_ticks = [float(t.get_text().replace("\u2212", "-")) for t in ax.get_xticklabels()]
    y_ticks = [float(t.get_text().replace("\u2212", "-")) for t in ax.get_yticklabels()]
    assert x_ticks == sorted(x_ticks) and y_ticks == sorted(y_ticks, reverse=True)
    assert x_ticks[0] == pytest.approx(q[0, 0], abs=0.01)
    # The decoded images are the decoder's means at those points: the top-left cell is z =
    # (smallest z0, largest z1).
    cell = ax.get_images()[0].get_array()[1:29, 1:29] / 255.0
    top_left = plots.decode_means(model, [[q[0, 0], q[-1, 1]]]).reshape(28, 28)
    np.testing.assert_allclose(cell, top_left, atol=1 / 255 + 1e-6)
    # A GMVAE's mixture prior has its own quantiles; other models are refused.
    plots.manifold(GMVAE(z_dim=2, k=3, hidden=(8,)), n=3)
    for other in (vae, SSVAE(z_dim=2, hidden=(8,), classifier_hidden=(8,))):
        assert "manifold" not in plots.kinds_for(other)
        with pytest.raises(ValueError, match="z_dim = 2"):
            plots.manifold(other)


def tfp_normal_quantiles(n):
    import tensorflow_probability as tfp

    p = (np.arange(n) + 0.5) / n
    return tfp.distributions.Normal(0.0, 1.0).quantile(p).numpy()


def test_save_chooses_the_format_by_extension_and_dpi(vae, tmp_path):
    figure = plots.reconstructions(vae, _images(4), columns=4)
    magic = {"png": PNG, "pdf": b"%PDF", "svg": b"<?xml"}
    for fmt, start in magic.items():
        path = plots.save(figure, str(tmp_path / f"r.{fmt.upper()}"))
        assert open(path, "rb").read(len(start)) == start, fmt
    widths = []
    for dpi in (50, 100):
        plots.save(figure, str(tmp_path / f"{dpi}.png"), dpi=dpi)
        widths.append(tf.io.decode_png((tmp_path / f"{dpi}.png").read_bytes()).shape[1])
    assert abs(widths[1] - 2 * widths[0]) <= 2, widths
    with pytest.raises(ValueError, match="png, pdf, svg"):
        plots.save(figure, str(tmp_path / "r.jpg"))
    assert plots.format_of("a/b.Svg") == "svg" and plots.format_of("figures") is None


def test_image_grid_labelled_or_bare(tmp_path):
    from tfp_vae import images

    pixels = np.random.default_rng(0).random((20, 784)).astype(np.float32)
    names = [str(k) for k in range(10)]
    labelled = plots.image_grid(pixels, 2, 10, col_labels=names, xlabel="class", title="m, 0")
    (ax,) = labelled.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert (ax.get_xlabel(), ax.get_title()) == ("class", "m, 0")
    # Bare: the pixel grid itself, one pixel per image pixel.
    path = plots.save(plots.image_grid(pixels, 2, 10, labels=False), str(tmp_path / "g.png"))
    written = tf.io.decode_png(open(path, "rb").read()).numpy()
    expected = images.grid(pixels, 2, 10)
    assert written.shape[:2] == expected.shape[:2]
    assert np.abs(written[..., 0].astype(int) - expected[..., 0]).max() <= 1


def test_missing_matplotlib_says_how_to_install(monkeypatch, vae):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails.
    with pytest.raises(ImportError, match=r'pip install "tfp_vae\[plots\]"'):
        plots.reconstructions(vae, _images(2))


# ---- bin/plot -----------------------------------------------------------------------------------


def _run(*args):
    return binaries.run("plot", *args)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    images = (rng.random((60, 28, 28)) * 255).astype(np.uint8)
    np.savez(
        path, x_train=images, x_test=images, y_train=np.arange(60) % 10, y_test=np.arange(60) % 10
    )
    return path


@pytest.mark.slow
def test_bin_plot_all_writes_every_figure(ssvae, npz, tmp_path):
    saved = tmp_path / "ssvae.keras"
    ssvae.save(saved)
    out = tmp_path / "figures"
    result = _run(
        f"--model_path={saved}",
        "--kind=all",
        f"--output={out}",
        f"--dataset=npz:{npz}",
        "--examples=40",
        "--format=pdf",
        "--dpi=50",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(os.listdir(out))
    # Every kind but the manifold (z_dim is 3, and the model has classes).
    assert names == sorted(f"{kind}.pdf" for kind in plots.KINDS if kind != "manifold")
    for name in names:
        assert (out / name).read_bytes()[:4] == b"%PDF" and (out / name).stat().st_size > 1000


@pytest.mark.slow  # A binary that starts TensorFlow.
def test_bin_plot_manifold(tmp_path):
    keras.utils.set_random_seed(0)
    saved = tmp_path / "vae2.keras"
    VAE(z_dim=2, hidden=(8,)).save(saved)
    result = _run(f"--model_path={saved}", "--kind=manifold", f"--output={tmp_path}/m.svg")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "m.svg").read_bytes()[:5] == b"<?xml" and result.stderr == ""


@pytest.mark.slow
def test_bin_plot_refuses_class_grid_of_a_vae(vae, npz, tmp_path):
    saved = tmp_path / "vae.keras"
    vae.save(saved)
    result = _run(f"--model_path={saved}", "--kind=class_grid", f"--output={tmp_path}/g.png")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ERROR: --kind=class_grid")
    assert "class_grid needs classes" in result.stderr and not (tmp_path / "g.png").exists()
    # The manifold is for z_dim = 2 (this VAE's is 3); an unknown extension is refused at once.
    result = _run(f"--model_path={saved}", "--kind=manifold", f"--output={tmp_path}/m.png")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "z_dim = 2" in result.stderr and "z_dim=3" in result.stderr
    result = _run(
        f"--model_path={tmp_path}/none.keras", f"--output={tmp_path}/m.jpg", "--kind=latent_map"
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "ending in .png, .pdf or .svg" in result.stderr


# ---- TensorBoard --------------------------------------------------------------------------------


def _events(directory):
    """{tag: sorted steps} of the summaries in the event files under `directory`, and
    {tag: (width, height)} of its images."""
    steps, sizes = {}, {}
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
                if value.metadata.plugin_data.plugin_name == "images":
                    width, height = value.tensor.string_val[:2]
                    sizes[value.tag] = (int(width), int(height))
    return {tag: sorted(s) for tag, s in steps.items()}, sizes


@pytest.mark.parametrize("semi_supervised", [False, True])
def test_tensorboard_images_and_per_step_scalars(semi_supervised, tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = (rng.random((200, 28, 28)) * 255).astype(np.uint8)
    labels = np.arange(200) % 10
    if semi_supervised:
        model = SSVAE(z_dim=3, hidden=(16,), classifier_hidden=(16,))

        def train(start):
            return semisupervised.make_train_dataset(
                images, labels, labels_per_class=2, batch_size=20, seed=0, start_step=start
            )

        val = semisupervised.make_eval_dataset(images[:50], labels[:50], batch_size=25)
    else:
        model = VAE(z_dim=3, hidden=(16,))

        def train(start):
            return data.train_dataset(images, 20, seed=0, start_step=start)

        val = data.eval_dataset(images[:50], batch_size=25)
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False, steps_per_execution=2)
    kwargs = dict(out_dir=str(tmp_path), steps_per_epoch=20, validation_data=val, verbose=0)
    training.fit(model, train, steps=40, **kwargs)
    steps, sizes = _events(str(tmp_path / "logs" / "samples"))
    assert steps["samples"] == [20, 40] and steps["reconstructions"] == [20, 40]
    # Samples: the model's own grid of about 64 images (`sample_grid`), 6 rows of 10 samples, or
    # a row per z and a column per class (6 x 10); reconstructions: the first 32 validation
    # images in rows of 8, each row followed by its reconstructions.
    assert sizes["samples"] == (10 * 29 + 1, 6 * 29 + 1)
    assert sizes["reconstructions"] == (8 * 29 + 1, 8 * 29 + 1)
    # Per-step scalars: 20 steps an epoch, one point every 2 optimizer steps (~10 an epoch),
    # though Keras calls the batch callbacks once per execution of 2 steps.
    scalars, _ = _events(str(tmp_path / "logs" / "train"))
    assert scalars["batch_loss"] == list(range(2, 41, 2))
    assert scalars["epoch_loss"] == scalars["epoch_learning_rate"] == [20, 40]
    validation, _ = _events(str(tmp_path / "logs" / "validation"))
    assert validation and all(s == [20, 40] for s in validation.values()), validation
    # Resumed, the run goes on along the same axis.
    training.fit(model, train, steps=60, resume=True, **kwargs)
    every = {}
    for folder in ("train", "validation", "samples"):
        for tag, s in _events(str(tmp_path / "logs" / folder))[0].items():
            every[f"{folder}/{tag}"] = s
    assert every["train/batch_loss"] == list(range(2, 61, 2))
    # Every scalar and image, of every writer, is stepped by the optimizer's step count.
    for tag, s in every.items():
        if not tag.startswith("train/batch_"):
            assert s == [20, 40, 60], tag


def test_fixed_images_come_from_validation_else_training_data():
    x = _images(40)
    first = training.SampleImages.first_images
    # Validation data first (its images: the first leaf of ((x_binary, x_gray), y) too).
    val = tf.data.Dataset.from_tensor_slices(((x, x), np.zeros(40, np.int32))).batch(10)
    np.testing.assert_array_equal(first(val, x[::-1]), x[:10])
    # No validation data: the first training batch; (unlabelled_x, (x, y)) gives unlabelled_x.
    train = tf.data.Dataset.from_tensors((x[5:], (x[:2], np.zeros(2, np.int32))))
    np.testing.assert_array_equal(first(None, train), x[5:37])
    np.testing.assert_array_equal(first(None, (x, None), n=3), x[:3])
    assert first(None, None) is None
