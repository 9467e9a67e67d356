"""What the benchmarks share: the machine's matmul peak and the FLOPs of our Dense networks."""

import time


def matmul_peak_flops(n=2048, repeats=10):
    """float32 FLOP/s of an n x n matmul (the best of `repeats`), the machine's practical peak."""
    import tensorflow as tf

    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    mm = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    mm(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        mm(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def dense_macs(network):
    """Multiply-adds of one row through a Sequential of Dense layers."""
    return sum(
        int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
        for layer in network.layers
        if hasattr(layer, "kernel")
    )
