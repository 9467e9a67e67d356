"""Figures of a trained model, with axes, titles and legends (matplotlib).

  interpolations   decoded points on the straight line between two images' posterior means
  traversals       one latent unit varied at a time around an image's posterior mean
  latent_map       posterior means in 2-D (PCA when z_dim > 2), coloured by label
  class_grid       class-conditional models: a row per class, a column per z ~ p(z)
  reconstructions  images beside their reconstructions
  manifold         z_dim = 2, VAE and GMVAE: images decoded on a grid of z over the prior's
                   quantiles

`image_grid` draws a plain grid of images (`bin/sample`'s), labelled or bare.

Each function takes a model of `tfp_vae.models` and images as NumPy arrays ([N, pixels] or
[N, 28, 28]; floats in [0, 1] or uint8 0..255; the binaries pass statically binarised test
images, as the models are evaluated) and returns a `matplotlib.figure.Figure`; `save` writes it.

matplotlib is an optional dependency (`pip install "tfp_vae[plots]"`), imported when a figure
is made. Figures are drawn on matplotlib's Agg canvas without pyplot, so no window opens and
pyplot's backend is left as it is (in a notebook, a returned figure still displays). The plain
PNG grids of `tfp_vae.images` need only TensorFlow.

What a model is asked, in one place (`posterior_means`, `decode_means`): a class-conditional
model (it has `num_classes`: SSVAE, M1M2) encodes q(z|x, y) with y its classifier's prediction
argmax q(y|x) and decodes with `generate(z, y)`; the others encode q(z|x) and decode p(x|z).
Images shown are pixel probabilities (the means of p(x|.)).
"""

import math

import numpy as np

INSTALL_HINT = 'pip install "tfp_vae[plots]"'
KINDS = (
    "interpolations",
    "traversals",
    "latent_map",
    "class_grid",
    "reconstructions",
    "manifold",
)
FORMATS = ("png", "pdf", "svg")  # What `save` writes, chosen by the file's extension.
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CELL_INCHES = 0.55  # Displayed size of one image.


def require_matplotlib():
    """matplotlib, or an ImportError that says how to install it."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            f"The figures need matplotlib, an optional dependency of tfp_vae: "
            f"{INSTALL_HINT} (or pip install matplotlib)."
        ) from e
    return matplotlib


def format_of(path):
    """The figure format of `path` by its extension ("png", "pdf" or "svg"; lower case), or
    None when it has none of `FORMATS`."""
    extension = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    return extension if extension in FORMATS else None


def save(figure, path, dpi=100):
    """Writes `figure` to `path` in the format of its extension (.png, .pdf or .svg: `FORMATS`)
    at `dpi` dots per inch (of raster output: PNG, and the images within a PDF or SVG); returns
    `path`.

    Raises:
      ValueError: another extension.
    """
    fmt = format_of(path)
    if fmt is None:
        raise ValueError(f"{path}: a figure is written as {', '.join(FORMATS)}; name it so.")
    from tfp_vae import files

    with files.replacing(path) as partial:  # Whole or not at all.
        figure.savefig(partial, dpi=dpi, format=fmt)
    return path


# ---- what the model answers ---------------------------------------------------------------------


def is_class_conditional(model):
    """Whether the model generates from a class (SSVAE, M1M2): the model says so."""
    return bool(getattr(model, "class_conditional", False))


def has_manifold(model):
    """Whether `manifold` applies: the model draws it (`figure_kinds`; a VAE or GMVAE with a
    2-D latent space)."""
    return "manifold" in kinds_for(model)


def kinds_for(model):
    """The figure kinds (of `KINDS`) that apply to `model`: the model says which it can draw
    (`figure_kinds`: `class_grid` for a class-conditional model, `manifold` for a 2-D latent
    space)."""
    own = getattr(model, "figure_kinds", KINDS)
    return tuple(k for k in KINDS if k in own)


def class_names(dataset="mnist", num_classes=10):
    """Names of the classes, for labels and legends: Fashion-MNIST's ten, else "0", "1", ..."""
    if dataset == "fashion_mnist" and num_classes == len(FASHION_MNIST_CLASSES):
        return FASHION_MNIST_CLASSES
    return tuple(str(k) for k in range(num_classes))


def _input_dim(model):
    """Pixels per image the model takes (a stacked model's x_dim counts its features)."""
    return int(getattr(model, "input_dim", model.x_dim))


def _side(model):
    dim = _input_dim(model)
    side = math.isqrt(dim)
    if side * side != dim:
        raise ValueError(f"The figures show square images; this model's have {dim} pixels.")
    return side


def _pixels(model, x, what="images"):
    """float32 [N, pixels] from [N, pixels] or [N, side, side(, 1)] floats or uint8."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        x = x / 255.0
    dim = _input_dim(model)
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != dim:
        raise ValueError(
            f"Expected {what} of shape [N, {dim}] (or [N, {_side(model)}, "
            f"{_side(model)}]); got shape {x.shape}."
        )
    if len(x) == 0:
        raise ValueError(f"No {what} given.")
    return x.reshape(len(x), dim).astype(np.float32)


def posterior_means(model, x, batch_size=1000):
    """(means, labels): the posterior means float32 [N, z_dim] of images x, and for a
    class-conditional model the classifier's predictions int32 [N] that they are conditioned
    on (None for the others)."""
    x = _pixels(model, x)
    means, labels = [], []
    for start in range(0, len(x), batch_size):
        mean, y = model.latent_means(x[start : start + batch_size])  # The model says how.
        means.append(np.asarray(mean, np.float32))
        if y is not None:
            labels.append(np.asarray(y, np.int32))
    return np.concatenate(means), (np.concatenate(labels) if labels else None)


def decode_means(model, z, y=None):
    """Pixel probabilities float32 [N, pixels] decoded from latents z [N, z_dim] (and, for a
    class-conditional model, classes y [N])."""
    z = np.asarray(z, np.float32)
    return np.asarray(model.generate(z, None if y is None else np.asarray(y, np.int32)), np.float32)


def _reconstructed(model, x, batch_size=1000):
    return np.concatenate(
        [
            np.asarray(model.reconstruct(x[i : i + batch_size]), np.float32)
            for i in range(0, len(x), batch_size)
        ]
    )


def _model_name(model):
    return f"{type(model).__name__}, z_dim={model.z_dim}"


# ---- drawing ------------------------------------------------------------------------------------


def _figure(width, height):
    """A constrained-layout Figure on the Agg canvas (no pyplot)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _centres(n, side, pad=1):
    return pad + np.arange(n) * (side + pad) + (side - 1) / 2


def _show(ax, pixels, rows, cols, side, row_labels=None, col_labels=None):
    """Draws images [N <= rows * cols, side * side] in [0, 1] as one rows x cols grid on `ax`
    (`images.grid`: white lines between cells, empty cells white), rows and columns labelled by
    ticks."""
    from tfp_vae import images

    ax.imshow(
        images.grid(pixels, rows, cols, side)[..., 0],
        cmap="gray",
        vmin=0,
        vmax=255,
        interpolation="nearest",
    )
    ax.set_xticks(
        _centres(cols, side) if col_labels is not None else [],
        labels=list(col_labels) if col_labels is not None else None,
    )
    ax.set_yticks(
        _centres(rows, side) if row_labels is not None else [],
        labels=list(row_labels) if row_labels is not None else None,
    )
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


# ---- the figures --------------------------------------------------------------------------------


def interpolations(model, x_a, x_b, steps=10):
    """Rows of pairs: row i decodes z = (1 - t) mu(a_i) + t mu(b_i) for `steps` values of t in
    [0, 1], mu the posterior mean, between the inputs a_i (left) and b_i (right).

    A class-conditional model decodes with the predicted class of a_i up to t = 0.5 and of b_i
    after (the rows are labelled "y: a -> b").

    Args:
      x_a, x_b: images [P, pixels] (or [P, 28, 28]), the pairs' two ends.
      steps: points on each line (>= 2), both ends included.
    """
    if int(steps) < 2:
        raise ValueError(f"steps must be >= 2 (both ends of the line); got {steps}.")
    steps, side = int(steps), _side(model)
    x_a, x_b = _pixels(model, x_a, "x_a"), _pixels(model, x_b, "x_b")
    if len(x_a) != len(x_b):
        raise ValueError(
            f"x_a and x_b must hold as many images (one pair per row); got "
            f"{len(x_a)} and {len(x_b)}."
        )
    pairs = len(x_a)
    (z_a, y_a), (z_b, y_b) = posterior_means(model, x_a), posterior_means(model, x_b)
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)
    z = (1 - t)[None, :, None] * z_a[:, None] + t[None, :, None] * z_b[:, None]
    y = None if y_a is None else np.where(t[None] <= 0.5, y_a[:, None], y_b[:, None]).reshape(-1)
    decoded = decode_means(model, z.reshape(pairs * steps, -1), y)
    figure = _figure(
        CELL_INCHES * (steps + 2) + (2.2 if y_a is not None else 1.2), CELL_INCHES * pairs + 1.7
    )
    left, middle, right = figure.subplots(1, 3, gridspec_kw={"width_ratios": [1, steps, 1]})
    rows = None if y_a is None else [f"y: {a} \u2192 {b}" for a, b in zip(y_a, y_b, strict=True)]
    _show(left, x_a, pairs, 1, side, row_labels=rows)
    _show(middle, decoded, pairs, steps, side, col_labels=[f"{v:.2g}" for v in t])
    _show(right, x_b, pairs, 1, side)
    left.set_title("A")
    right.set_title("B")
    middle.set_title("decoded at z = (1 \u2212 t)\u00b7\u03bc(A) + t\u00b7\u03bc(B)")
    middle.set_xlabel("t")
    figure.suptitle(f"Latent interpolations between posterior means ({_model_name(model)})")
    return figure


def traversals(model, x, dims=None, values=None, max_dims=10):
    """Latent traversals around the posterior mean mu of the first image of x: row d decodes
    mu + v e_d for each offset v of `values`, one unit d at a time.

    With `dims` None, every unit when z_dim <= max_dims; otherwise the `max_dims` most active
    units, those whose posterior means vary most across the images of x (largest variance),
    as the title says. A class-conditional model decodes with the first image's predicted class.

    Args:
      x: images [N, pixels]: the first is traversed; all of them measure the units' activity
        (shown beside each unit when N > 1).
      dims: the units to vary (ints), or None (see above).
      values: offsets from mu (default: -3 to 3 in 9 steps, for a N(0, I) prior).
    """
    side = _side(model)
    x = _pixels(model, x)
    means, labels = posterior_means(model, x)
    z_dim = means.shape[1]
    values = (
        np.linspace(-3.0, 3.0, 9) if values is None else np.asarray(values, np.float64).reshape(-1)
    )
    if not len(values):
        raise ValueError("values must hold at least one offset.")
    activity = means.var(axis=0) if len(x) > 1 else None
    if dims is None:
        if z_dim <= max_dims:
            dims, which = list(range(z_dim)), f"all {z_dim} latent units"
        elif activity is None:
            raise ValueError(
                f"z_dim={z_dim} > max_dims={max_dims}: pass several images (the "
                "first is traversed, all of them rank the units by activity), or "
                "choose the units with dims."
            )
        else:
            dims = [int(d) for d in np.argsort(-activity, kind="stable")[:max_dims]]
            which = (
                f"the {len(dims)} most active of {z_dim} latent units\n(largest variance "
                f"of the posterior means over {len(x)} images)"
            )
    else:
        dims = [int(d) for d in np.asarray(dims).reshape(-1)]
        if not dims or min(dims) < 0 or max(dims) >= z_dim:
            raise ValueError(f"dims must be latent units in 0..{z_dim - 1}; got {dims}.")
        which = f"latent units {dims} of {z_dim}"
    z = np.repeat(means[:1], len(dims) * len(values), axis=0).reshape(len(dims), len(values), -1)
    for i, d in enumerate(dims):
        z[i, :, d] += values
    y = None if labels is None else np.full(z.shape[0] * z.shape[1], labels[0], np.int32)
    decoded = decode_means(model, z.reshape(-1, z_dim), y)
    figure = _figure(CELL_INCHES * (len(values) + 1) + 2.4, CELL_INCHES * len(dims) + 1.7)
    image, grid = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, len(values)]})
    _show(image, x[:1], 1, 1, side)
    image.set_title("input" if labels is None else f"input\n\u0177 = {labels[0]}")
    rows = [f"z{d}" + ("" if activity is None else f" (var {activity[d]:.2g})") for d in dims]
    _show(
        grid,
        decoded,
        len(dims),
        len(values),
        side,
        row_labels=rows,
        col_labels=[f"{v:+.2g}" for v in values],
    )
    grid.set_xlabel("offset from the posterior mean \u03bc")
    figure.suptitle(f"Traversals of {which}, {_model_name(model)}")
    return figure


def latent_map(model, x, y=None, class_names=None):
    """The posterior means of images x in 2-D, coloured by label: the units themselves when
    z_dim <= 2, else the first two principal components (PCA by SVD of the centred means; the
    axis labels give each one's share of the variance).

    Args:
      x: images [N, pixels] (N >= 2).
      y: their labels, ints [N] (one colour and legend entry per class present), or None.
      class_names: names indexed by label (default: the labels as numbers).
    """
    means, _ = posterior_means(model, x)
    n, z_dim = means.shape
    if n < 2:
        raise ValueError(f"The map needs at least 2 images; got {n}.")
    if z_dim > 2:
        centred = means - means.mean(axis=0)
        _, singular, components = np.linalg.svd(centred, full_matrices=False)
        coords = centred @ components[:2].T
        share = singular**2 / max(float(np.sum(singular**2)), 1e-30)
        labels = [f"PC{i + 1} ({share[i]:.1%} of the variance)" for i in range(2)]
        how = f"PCA of {z_dim}-D means to 2-D"
    elif z_dim == 2:
        coords, labels, how = means, ["z0", "z1"], "2-D latent"
    else:
        coords = np.stack([means[:, 0], np.zeros(n, np.float32)], axis=1)
        labels, how = ["z0", ""], "1-D latent"
    figure = _figure(7.0, 5.6)
    ax = figure.subplots()
    if y is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=6, alpha=0.6)
    else:
        y = np.asarray(y).astype(np.int64).reshape(-1)
        if len(y) != n:
            raise ValueError(f"{n} images but {len(y)} labels.")
        from matplotlib import colormaps

        classes = np.unique(y)
        colours = colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for i, c in enumerate(classes):
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            ax.scatter(
                coords[y == c, 0],
                coords[y == c, 1],
                s=6,
                alpha=0.6,
                color=colours(i % colours.N),
                label=name,
            )
        ax.legend(
            title="label",
            markerscale=3,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
        )
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    if z_dim == 1:
        ax.set_yticks([])
    what = "q(z|x, \u0177)" if is_class_conditional(model) else "q(z|x)"
    ax.set_title(
        f"Posterior means of {what} for {n} images, {how} ({_model_name(model)})", fontsize="medium"
    )
    return figure


def class_grid(model, samples=10, seed=0, class_names=None):
    """Class-conditional samples: a row per class (labelled with its name), a column per
    z ~ p(z), the same z down each column (the style held, the class varied).

    Args:
      samples: columns (different z).
      seed: the stateless seed of the z draws (the same as `bin/sample`'s style grid).
      class_names: names indexed by class (default "0", "1", ...).

    Raises:
      ValueError: the model is not class-conditional (see `is_class_conditional`).
    """
    if not is_class_conditional(model):
        raise ValueError(
            f"class_grid needs a class-conditional model (ssvae, m1m2); a "
            f"{type(model).__name__} has no classes."
        )
    if int(samples) < 1:
        raise ValueError(f"samples must be >= 1; got {samples}.")
    k, samples, side = model.num_classes, int(samples), _side(model)
    # The style grid has a row per z; here a row per class.
    grid = np.asarray(model.style_grid(samples, seed=np.array([seed, 2], np.int32)), np.float32)
    decoded = grid.reshape(samples, k, -1).transpose(1, 0, 2).reshape(k * samples, -1)
    names = class_names if class_names is not None else [str(c) for c in range(k)]
    figure = _figure(CELL_INCHES * samples + 1.8, CELL_INCHES * k + 1.0)
    ax = figure.subplots()
    _show(
        ax,
        decoded,
        k,
        samples,
        side,
        row_labels=list(names)[:k],
        col_labels=[str(i + 1) for i in range(samples)],
    )
    ax.set_ylabel("class y")
    ax.set_xlabel("z ~ p(z): one per column, the same down each column")
    ax.set_title(f"Class-conditional samples p(x|y, z) ({_model_name(model)})", fontsize="medium")
    return figure


def reconstructions(model, x, columns=8):
    """Images (left) beside their reconstructions (right, cell for cell): the pixel
    probabilities of p(x|z) at the posterior mean (for a class-conditional model, with y its
    classifier's prediction).

    Args:
      x: images [N, pixels].
      columns: images per row of each panel.
    """
    side = _side(model)
    x = _pixels(model, x)
    recon = _reconstructed(model, x)
    columns = max(1, min(int(columns), len(x)))
    rows = -(-len(x) // columns)
    figure = _figure(2 * CELL_INCHES * columns + 1.0, CELL_INCHES * rows + 1.2)
    inputs, outputs = figure.subplots(1, 2)
    _show(inputs, x, rows, columns, side)
    _show(outputs, recon, rows, columns, side)
    inputs.set_title("input")
    outputs.set_title("reconstruction")
    how = (
        "at the mean of q(z|x, \u0177), \u0177 the predicted class"
        if is_class_conditional(model)
        else "at the posterior mean"
    )
    figure.suptitle(f"Reconstructions: p(x|z) {how} ({_model_name(model)})")
    return figure


def prior_quantiles(model, n, draws=20000, seed=0):
    """float32 [n, z_dim]: column d holds the quantiles at probabilities (i + 1/2) / n, i = 0..n-1,
    of the marginal of p(z) in unit d, estimated from `draws` seeded draws of the prior (any
    prior: N(0, I) or the GMVAE's mixture)."""
    import tensorflow as tf

    z = np.asarray(model.prior().sample(int(draws), seed=tf.constant([seed, 4])), np.float64)
    probabilities = (np.arange(n) + 0.5) / n
    return np.quantile(z, probabilities, axis=0).astype(np.float32)


def manifold(model, n=20, seed=0):
    """The learned 2-D manifold: images decoded at the z of an n x n grid over the quantiles
    of the prior's marginals (`prior_quantiles`), z0 growing to the right, z1 upwards, as in
    Kingma & Welling (2014), Fig. 4.

    Args:
      n: the grid's side (>= 2).
      seed: the seed of the prior draws that estimate the quantiles.

    Raises:
      ValueError: the model's z_dim is not 2, or it is class-conditional (`has_manifold`).
    """
    if not has_manifold(model):
        raise ValueError(
            f"The manifold is drawn for a VAE or GMVAE with z_dim = 2; this is a "
            f"{type(model).__name__} with z_dim={model.z_dim}"
            + (" and classes." if is_class_conditional(model) else ".")
        )
    if int(n) < 2:
        raise ValueError(f"n must be >= 2; got {n}.")
    n, side = int(n), _side(model)
    q = prior_quantiles(model, n, seed=seed)
    z0, z1 = q[:, 0], q[::-1, 1]  # Rows from the top: z1 decreasing.
    z = np.stack(np.meshgrid(z0, z1), axis=-1).reshape(n * n, 2)  # Row-major: a row per z1.
    decoded = decode_means(model, z)
    size = max(4.0, CELL_INCHES * 0.6 * n)  # Smaller cells than the other figures': n is ~20.
    figure = _figure(size + 1.4, size + 1.4)
    ax = figure.subplots()
    every = max(1, n // 5)  # About five tick labels an axis.
    ticks = list(range(0, n, every))
    _show(ax, decoded, n, n, side)
    ax.set_xticks(_centres(n, side)[ticks], labels=[f"{z0[i]:.2g}" for i in ticks])
    ax.set_yticks(_centres(n, side)[ticks], labels=[f"{z1[i]:.2g}" for i in ticks])
    ax.set_xlabel("z0")
    ax.set_ylabel("z1")
    ax.set_title(
        f"Decoded means of p(x|z) on the quantiles of p(z)\n({_model_name(model)})",
        fontsize="medium",
    )
    return figure


def image_grid(pixels, rows, cols, col_labels=None, xlabel=None, title=None, labels=True, dpi=100):
    """A grid of images [N <= rows * cols, side * side] in [0, 1] (as `images.grid` tiles
    them). With `labels`, the columns are labelled (`col_labels`, `xlabel`) under a `title`;
    without, the figure is the bare grid, one image pixel per pixel at `dpi`."""
    pixels = np.asarray(pixels, np.float32)
    side = math.isqrt(pixels.shape[-1])
    if not labels:
        from tfp_vae import images

        canvas = images.grid(pixels, rows, cols, side)[..., 0]
        height, width = canvas.shape
        figure = _figure(width / dpi, height / dpi)
        figure.set_layout_engine("none")
        ax = figure.add_axes((0, 0, 1, 1))
        ax.imshow(canvas, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_axis_off()
        return figure
    figure = _figure(CELL_INCHES * cols + 0.8, CELL_INCHES * rows + 1.2)
    ax = figure.subplots()
    _show(ax, pixels, rows, cols, side, col_labels=col_labels)
    if xlabel:
        ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title, fontsize="medium")
    return figure
