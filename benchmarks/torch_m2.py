"""The PyTorch M2 of benchmarks/ssvae_torch_peer.py (accuracy) and train_throughput.py (speed):
the course's networks, init and loss, written independently of tfp_vae. PyTorch only (pip install
-e .[bench]); imported lazily by the scripts that use it."""

import math

K, Z, BATCH = 10, 64, 97


def mlp(sizes, activation):
    from torch import nn

    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def build_peer(x_u, x_l, y_l, batch=BATCH, return_classifier=False, device="cpu"):
    """The peer's training step, a function of no arguments that draws a batch of `batch`
    dynamically binarised unlabelled images from x_u (float32 [N, 784] intensities in [0, 1]),
    takes one Adam step on mean -U(x) + 100 * cross-entropy on the labelled (x_l, y_l) and
    returns the loss (a tensor). Also returns the classifier when `return_classifier`. The
    networks live on `device` ("cpu" or "cuda"), where the tensors passed must be too."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    classifier = mlp([784, 300, 300, K], nn.ReLU).to(device)
    encoder = mlp([784 + K, 300, 300, 2 * Z], nn.ELU).to(device)
    decoder = mlp([Z + K, 300, 300, 784], nn.ELU).to(device)
    params = [*classifier.parameters(), *encoder.parameters(), *decoder.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    eye = torch.eye(K, device=device)

    def negative_unlabelled_bound(x):
        logits = classifier(x)
        log_q = F.log_softmax(logits, dim=1)
        q = log_q.exp()
        b = x.shape[0]
        xs = x.repeat(K, 1)  # class-major [K * B, 784]
        ys = eye.repeat_interleave(b, dim=0)
        h = encoder(torch.cat([xs, ys], 1))
        mean, var = h[:, :Z], F.softplus(h[:, Z:]) + 1e-8
        z = mean + var.sqrt() * torch.randn_like(mean)
        x_logits = decoder(torch.cat([z, ys], 1))
        rec = F.binary_cross_entropy_with_logits(x_logits, xs, reduction="none").sum(1)
        kl_z = 0.5 * (var + mean**2 - 1 - var.log()).sum(1)
        per_class = (rec + kl_z).view(K, b).t()  # [B, K]
        kl_y = (q * (log_q + math.log(K))).sum(1)
        return ((q * per_class).sum(1) + kl_y).mean()

    def step():
        xb = torch.bernoulli(x_u[torch.randint(0, len(x_u), (batch,), device=device)])
        loss = negative_unlabelled_bound(xb) + 100.0 * F.cross_entropy(classifier(x_l), y_l)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    return (step, classifier) if return_classifier else step
