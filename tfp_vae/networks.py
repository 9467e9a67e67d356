"""Multilayer perceptrons used by every model, and small convolutional networks for images
(`conv_encoder`, `conv_decoder`) to pass as a model's `encoder=` and `decoder=`."""

import math
import numbers
from collections.abc import Sequence

import keras

from tfp_vae.backend import Tensor

ops = keras.ops

# The initialisations of the recipe's MLPs (`mlp`'s `init`).
INITS = ("torch", "glorot")


def _dense(units, fan_in, activation, init, name):
    if init == "torch":
        # PyTorch's nn.Linear default: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)) for the
        # kernel and the same range for the bias. The reference numbers were measured with it.
        bound = 1.0 / math.sqrt(fan_in)
        kernel = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")
        bias = keras.initializers.RandomUniform(-bound, bound)
    elif init == "glorot":
        kernel, bias = "glorot_uniform", "zeros"
    else:
        raise ValueError(f"init must be 'torch' or 'glorot'; got {init!r}.")
    return keras.layers.Dense(
        units, activation=activation, kernel_initializer=kernel, bias_initializer=bias, name=name
    )


def mlp(
    input_dim: int,
    hidden: Sequence[int],
    output_dim: int,
    activation: str = "elu",
    init: str = "torch",
    name: str = "mlp",
) -> keras.Sequential:
    """[B, input_dim] -> [B, output_dim]; `activation` after each hidden layer, linear output."""
    layers = [keras.Input(shape=(input_dim,))]
    fan_in = input_dim
    for i, units in enumerate(hidden):
        layers.append(_dense(units, fan_in, activation, init, f"{name}_hidden{i}"))
        fan_in = units
    layers.append(_dense(output_dim, fan_in, None, init, f"{name}_out"))
    return keras.Sequential(layers, name=name)


# ----------------------------------------------------------------------------------------------
# Small convolutional networks for images (H, W divisible by 4: two stride-2 stages).

_CONV_FILTERS = (32, 64)  # Channels after the first and second stride-2 stage.
_CONV_KERNEL = 4  # A multiple of the stride, so the transposed convolutions overlap
# evenly (no checkerboard pattern in the decoder's output).


def _is_count(value):
    """A positive integer (Python or NumPy; not a bool, not a float)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _image_shape(input_shape):
    """input_shape as (H, W, C) ints, H and W divisible by 4 (two stride-2 stages); else
    ValueError."""
    sequence = hasattr(input_shape, "__len__") and not isinstance(input_shape, (str, bytes))
    shape = tuple(input_shape) if sequence else None  # A tuple, list, array, TensorShape.
    if (
        shape is None
        or len(shape) != 3
        or not all(_is_count(d) for d in shape)
        or shape[0] % 4
        or shape[1] % 4
    ):
        raise ValueError(
            f"input_shape must be (H, W, C), positive integers with H and W "
            f"divisible by 4 (e.g. (28, 28, 1) or (32, 32, 3)); got "
            f"{input_shape!r}."
        )
    return tuple(int(d) for d in shape)


def _count(value, what):
    if not _is_count(value):
        raise ValueError(f"{what} must be a positive integer; got {value!r}.")
    return int(value)


def conv_encoder(input_shape, out_dim, name="encoder") -> keras.Sequential:
    """Images [B, H, W, C] -> [B, out_dim] (e.g. a posterior's [B, 2 * z_dim]).

    Conv2D 32 and 64 filters (4x4, stride 2, "same", ELU): [B, H/2, W/2, 32] -> [B, H/4, W/4, 64],
    then Flatten and a linear Dense(out_dim). Keras' default (Glorot) initialisation. For
    (28, 28, 1) and out_dim 20: 96,116 weights.

    Raises:
      ValueError: input_shape is not (H, W, C) with H and W divisible by 4.
    """
    h, w, c = _image_shape(input_shape)
    out_dim = _count(out_dim, "out_dim")
    conv = [
        keras.layers.Conv2D(
            filters,
            _CONV_KERNEL,
            strides=2,
            padding="same",
            activation="elu",
            name=f"{name}_conv{i}",
        )
        for i, filters in enumerate(_CONV_FILTERS)
    ]
    return keras.Sequential(
        [
            keras.Input(shape=(h, w, c)),
            *conv,
            keras.layers.Flatten(name=f"{name}_flatten"),
            keras.layers.Dense(out_dim, name=f"{name}_out"),
        ],
        name=name,
    )


def conv_decoder(in_dim, input_shape, out_channels=None, name="decoder") -> keras.Sequential:
    """Latents [B, in_dim] -> [B, H, W, out_channels], the likelihood's parameters per pixel
    (Bernoulli logits, say), for images of input_shape (H, W, C).

    Dense(H/4 * W/4 * 64, ELU), reshaped to [B, H/4, W/4, 64], then Conv2DTranspose 32 filters
    (4x4, stride 2, "same", ELU) -> [B, H/2, W/2, 32] and out_channels filters (linear) ->
    [B, H, W, out_channels]. out_channels defaults to C. For in_dim 10 and (28, 28, 1): 67,809
    weights.

    Raises:
      ValueError: input_shape is not (H, W, C) with H and W divisible by 4.
    """
    h, w, c = _image_shape(input_shape)
    in_dim = _count(in_dim, "in_dim")
    out_channels = c if out_channels is None else _count(out_channels, "out_channels")
    top = (h // 4, w // 4, _CONV_FILTERS[1])
    return keras.Sequential(
        [
            keras.Input(shape=(in_dim,)),
            keras.layers.Dense(top[0] * top[1] * top[2], activation="elu", name=f"{name}_dense"),
            keras.layers.Reshape(top, name=f"{name}_reshape"),
            keras.layers.Conv2DTranspose(
                _CONV_FILTERS[0],
                _CONV_KERNEL,
                strides=2,
                padding="same",
                activation="elu",
                name=f"{name}_deconv0",
            ),
            keras.layers.Conv2DTranspose(
                out_channels, _CONV_KERNEL, strides=2, padding="same", name=f"{name}_deconv1"
            ),
        ],
        name=name,
    )


def apply(
    network: keras.Layer,
    inputs: Tensor,
    input_shape: Sequence[int] | None = None,
    training: bool = False,
) -> Tensor:
    """Applies a network on one batch axis to inputs with any leading axes: [..., d_in] ->
    [..., d_out] (for instance [m, B, z] importance samples), by folding the leading axes into
    the batch. With `input_shape` (a network on images, (28, 28, 1) say) the flat inputs
    [..., prod(input_shape)] are given to it as [N, *input_shape]. An output of several axes
    per example ([N, 28, 28, 1] logits) comes back flat ([..., 784]). `training` is passed to
    the network (Dropout drops and BatchNormalization uses and updates batch statistics only
    when True: the training steps')."""
    inputs = ops.convert_to_tensor(inputs)
    shape = (inputs.shape[-1],) if input_shape is None else tuple(input_shape)
    if len(inputs.shape) == 2 and len(shape) == 1:
        out = network(inputs, training=training)
        return out if len(out.shape) == 2 else ops.reshape(out, [-1, math.prod(out.shape[1:])])
    out = network(ops.reshape(inputs, (-1,) + shape), training=training)
    width = math.prod(out.shape[1:])
    return ops.reshape(out, tuple(ops.shape(inputs)[:-1]) + (width,))


# ----------------------------------------------------------------------------------------------
# Networks whose input is [x, onehot(y)] (the SSVAE's encoder and decoder).
#
# For a first Dense layer, [x, onehot(y)] W + b = x W_x + (W_y[y] + b): the label only picks a
# row of W_y. So enumerating all K labels for one x needs x W_x once, not K times; the tiled
# alternative runs the whole first layer (784 + 10 -> 300 in the recipe's encoder) on K copies.


def split_first_dense(network, label_width):
    """(first Dense layer, the layers after it) when `network` is a `keras.Sequential` whose first
    layer is a plain Dense over an input that ends with `label_width` one-hot columns, so that its
    product can be split into an x part and a label part; None otherwise (any other network: the
    callers then tile and concatenate, which is exact for every network)."""
    if not isinstance(network, keras.Sequential) or not network.layers:
        return None
    first = network.layers[0]
    if (
        type(first) is not keras.layers.Dense
        or not first.built
        or getattr(first, "lora_enabled", False)
        or getattr(first, "quantization_mode", None) is not None
        or first.kernel.shape[0] <= label_width
    ):
        return None
    return first, network.layers[1:]


def _label_rows(first, label_width, dtype):
    """W_y + b: the first layer's pre-activation contribution of each label, [K, units]."""
    kernel = ops.cast(first.kernel, dtype)
    rows = kernel[-label_width:]
    if first.use_bias:
        rows = rows + ops.cast(first.bias, dtype)
    return kernel[:-label_width], rows


def _finish(first, rest, pre_activation, training=False):
    h = pre_activation if first.activation is None else first.activation(pre_activation)
    for layer in rest:
        h = layer(h, training=training)
    return h


def apply_labelled(
    network: keras.Layer,
    x: Tensor,
    labels: Tensor,
    num_classes: int,
    factorise: bool = True,
    training: bool = False,
) -> Tensor:
    """network([x, onehot(labels)], training=training) for x [N, d] and int labels [N]:
    [N, d_out].

    With `factorise` and a network whose first layer is Dense (`split_first_dense`), the label's
    row of the kernel is gathered and added instead of concatenating a one-hot block."""
    split = split_first_dense(network, num_classes) if factorise else None
    if split is None:
        onehot = ops.one_hot(labels, num_classes, dtype=x.dtype)
        return network(ops.concatenate([x, onehot], axis=-1), training=training)
    first, rest = split
    kernel_x, rows = _label_rows(first, num_classes, first.compute_dtype)
    pre = ops.matmul(ops.cast(x, first.compute_dtype), kernel_x) + ops.take(rows, labels, axis=0)
    return _finish(first, rest, pre, training)


def apply_enumerated(
    network: keras.Layer,
    x: Tensor,
    num_classes: int,
    shared: bool,
    factorise: bool = True,
    training: bool = False,
) -> Tensor:
    """network([x_r, onehot(k)], training=training) for every label k, class-major:
    [K * B, d_out], row k * B + i pairing example i with label k.

    Args:
      x: [B, d], the same input for every label (`shared`, e.g. the encoder's images), or
        [K * B, d], class-major, one input per (label, example) (e.g. the decoder's latents, a
        different z for each label).
      factorise: with a first Dense layer (`split_first_dense`), compute x W_x once per row of x
        and add each label's row of W_y (and the bias) before the activation; a shared x then
        costs one first-layer product instead of K. Otherwise tile x and concatenate one-hots.
    """
    k = num_classes
    split = split_first_dense(network, k) if factorise else None
    if split is None:
        if shared:
            x = ops.reshape(ops.tile(x[None], [k, 1, 1]), [-1, x.shape[-1]])
        rows_per_class = ops.shape(x)[0] // k
        # Class-major labels [K * rows]: row r has label r // rows_per_class.
        labels = ops.arange(ops.shape(x)[0]) // rows_per_class
        onehot = ops.one_hot(labels, k, dtype=x.dtype)
        return network(ops.concatenate([x, onehot], axis=-1), training=training)
    first, rest = split
    kernel_x, rows = _label_rows(first, k, first.compute_dtype)
    xw = ops.matmul(ops.cast(x, first.compute_dtype), kernel_x)  # [B, H] or [K * B, H]
    units = xw.shape[-1]
    xw = xw[None] if shared else ops.reshape(xw, [k, -1, units])  # [1 or K, B, H]
    pre = ops.reshape(xw + rows[:, None, :], [-1, units])  # [K * B, H]
    return _finish(first, rest, pre, training)


# ----------------------------------------------------------------------------------------------
# The user's own networks (a model's `encoder=`, `decoder=`, `classifier=` arguments).


def _shape_text(shape, formula=None):
    """ "[batch, 784]", "[batch, 28, 28, 1]", or with a formula
    "[batch, 2 * z_dim] = [batch, 20]"."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    text = "[" + ", ".join(["batch"] + [str(d) for d in shape]) + "]"
    if formula is None or (len(shape) == 1 and formula == str(shape[0])):
        return text
    return f"[batch, {formula}] = {text}"


def user_network(
    network: keras.Layer,
    role: str,
    input_shape: int | Sequence[int],
    output_shapes: Sequence[int | Sequence[int]],
    input_formula: str | None = None,
    output_formula: str | None = None,
) -> keras.Layer:
    """A network the user passed for `role` ("encoder", ...): checked and built, returned as is.

    It must be a Keras layer or model (`keras.Sequential`, a functional or subclassed
    `keras.Model`, any `keras.layers.Layer`), built or not, mapping [batch, *input_shape] to
    [batch, *s] for one of `output_shapes` (each a shape without the batch axis, or an int
    width; a decoder may give one image's shape, (28, 28, 1), or its flat width, 784). It is
    called once on a symbolic [None, *input_shape] input, which builds an unbuilt one (without
    fixing the batch size) and gives its output shape; ValueError naming the expected shapes
    (with their formulas, e.g. "2 * z_dim") when it is not a layer, fails on that input or gives
    another shape. The models flatten any leading sample axes into the batch before calling it
    (`apply`), so it only ever sees one batch axis.

    The models call their networks with `training=True` in their training steps (`fit`, the
    trainable SavedModel's `train_step`), so that Dropout drops and BatchNormalization uses the
    batch's statistics and updates its moving ones, and with `training=False` everywhere else
    (evaluation, the bounds, sampling, reconstructions, serving, plots).
    """
    input_shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    outputs = list(dict.fromkeys((o,) if isinstance(o, int) else tuple(o) for o in output_shapes))
    expected = f"{role} must map {_shape_text(input_shape, input_formula)} to " + " or ".join(
        _shape_text(o, output_formula if len(o) == 1 else None) for o in outputs
    )
    if not isinstance(network, keras.layers.Layer):
        raise ValueError(
            f"{expected}: pass a Keras layer or model (keras.Sequential, "
            f"keras.Model, keras.layers.Layer); got {type(network).__name__}."
        )
    try:
        out = network(keras.KerasTensor((None,) + input_shape, dtype="float32"))
    except Exception as e:  # Keras' own message (an input spec, a failing call) follows.
        raise ValueError(f"{expected}; calling it on {_shape_text(input_shape)} failed: {e}") from e
    if not isinstance(out, keras.KerasTensor):
        raise ValueError(f"{expected}, one tensor; it gives {type(out).__name__}.")
    if tuple(out.shape[1:]) not in outputs:
        raise ValueError(f"{expected}; it gives {_shape_text(tuple(out.shape[1:]))}.")
    return network


def serialize_networks(config, model, names):
    """`config` with the networks `names` (the user's) of `model` added, serialised with
    `keras.saving.serialize_keras_object` (their weights are saved with the model's)."""
    return {
        **config,
        **{name: keras.saving.serialize_keras_object(getattr(model, name)) for name in names},
    }


def deserialize_networks(config, names, custom_objects=None):
    """`config` with the serialised networks among `names` deserialised (a model's
    `from_config`); entries that are absent, None or already layers are left as they are."""
    config = dict(config)
    for name in names:
        if isinstance(config.get(name), dict):
            config[name] = keras.saving.deserialize_keras_object(
                config[name], custom_objects=custom_objects
            )
    return config
