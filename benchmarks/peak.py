"""What the benchmarks share: the machine's matmul peak and the FLOPs of our Dense networks."""

import time


def matmul_peak_flops(n=2048, repeats=10, framework="tensorflow"):
    """float32 FLOP/s of an n x n matmul (the best of `repeats`), the machine's practical peak,
    in `framework`: "tensorflow", "jax" (on JAX's default device, at JAX's default matmul
    precision, which is what Keras' Dense uses there) or "torch" (on CUDA when there is one,
    with TF32 allowed as for the PyTorch peers there, else the CPU)."""
    if framework == "tensorflow":
        import tensorflow as tf

        a = tf.random.normal([n, n])
        b = tf.random.normal([n, n])
        mm = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
        run = lambda: mm(a, b).numpy()  # noqa: E731
    elif framework == "jax":
        import jax

        ka, kb = jax.random.split(jax.random.PRNGKey(0))
        a = jax.random.normal(ka, (n, n))
        b = jax.random.normal(kb, (n, n))
        mm = jax.jit(lambda a, b: (a @ b).sum())
        run = lambda: mm(a, b).block_until_ready()  # noqa: E731
    elif framework == "torch":
        import torch

        device = torch_device()
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)

        def run():
            (a @ b).sum().item()  # .item() waits for the device.

    else:
        raise ValueError(f"framework must be tensorflow, jax or torch; got {framework!r}.")
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def torch_device():
    """ "cuda" when PyTorch sees a GPU (TF32 matmuls allowed there, as JAX's and TensorFlow's
    defaults on GPUs), else "cpu"."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        return "cuda"
    return "cpu"


def framework_device(framework):
    """In words, the device `matmul_peak_flops(framework=...)` runs on."""
    if framework == "jax":
        import jax

        d = jax.devices()[0]
        return "cpu" if d.platform == "cpu" else f"{d.platform}: {d.device_kind}"
    if framework == "torch":
        import torch

        return f"cuda: {torch.cuda.get_device_name()}" if torch_device() == "cuda" else "cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"gpu: {gpus[0].name}" if gpus else "cpu"


def dense_macs(network):
    """Multiply-adds of one row through a Sequential of Dense layers."""
    return sum(
        int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
        for layer in network.layers
        if hasattr(layer, "kernel")
    )
