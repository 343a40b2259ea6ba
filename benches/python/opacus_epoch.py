#!/usr/bin/env python3
"""One MNIST DP-SGD epoch with Opacus 1.6 and one non-private PyTorch epoch, with the same model,
expected batch size, noise multiplier, clipping bound and learning rate as `dpsgd train`, on the
CPU or a GPU; prints both wall times (and test accuracy) so they can be set beside dpsgd's.

    pip install torch opacus==1.6.0
    python benches/python/opacus_epoch.py --data-dir data/mnist --device cpu
    python benches/python/opacus_epoch.py --data-dir data/mnist --device cuda --step-bench

Opacus runs with Poisson sampling (`poisson_sampling=True`, its default), flat clipping and
SGD; its DataLoader is replaced by a tensor-indexing loader so that data loading costs the same
as dpsgd's in-memory gather. `--step-bench` also times one step at B = 256 (median of 50).

`--model scatter-cnn|scatter-linear` (issue 14's speed comparison): Tramer & Boneh's models on
Kymatio 0.3.0 scattering features (J = 2, L = 8, 81 x 7 x 7), as dpsgd's `--model scatter-cnn|
scatter-linear`: GroupNorm(27, 81) then the paper's CNN (GroupNorm without affine parameters, as
the paper and dpsgd's scatter-cnn) or a linear layer (GroupNorm with affine parameters, as dpsgd's
scatter-linear).
The features are computed once with Kymatio's torch frontend (timed and printed separately, not
part of the epoch) and kept in `--feature-cache` (.npy), as dpsgd keeps its own cache.

    pip install torch opacus==1.6.0 kymatio==0.3.0
    python benches/python/opacus_epoch.py --model scatter-cnn --batch-size 256 --threads 2
"""
import argparse
import gzip
import os
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    for p in (path, path + ".gz"):
        if os.path.exists(p):
            raw = open(p, "rb").read()
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
            nd = raw[3]
            dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
            return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)
    raise FileNotFoundError(path)


def mnist(d, split):
    pre = "train" if split == "train" else "t10k"
    x = read_idx(os.path.join(d, f"{pre}-images-idx3-ubyte")).astype(np.float32)
    y = read_idx(os.path.join(d, f"{pre}-labels-idx1-ubyte")).astype(np.int64)
    x = (x / 255.0 - 0.1307) / 0.3081
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


def model(act):
    a = {"relu": nn.ReLU, "tanh": nn.Tanh}[act]
    return nn.Sequential(
        nn.Conv2d(1, 16, 8, 2, padding=3), a(), nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, 2), a(), nn.MaxPool2d(2, 1), nn.Flatten(),
        nn.Linear(32 * 4 * 4, 32), a(), nn.Linear(32, 10))


def scatter_model(kind):
    if kind == "scatter-linear":
        return nn.Sequential(nn.GroupNorm(27, 81), nn.Flatten(), nn.Linear(81 * 7 * 7, 10))
    return nn.Sequential(
        nn.GroupNorm(27, 81, affine=False),
        nn.Conv2d(81, 16, 3, 2, padding=1), nn.Tanh(),
        nn.Conv2d(16, 32, 3, 1, padding=1), nn.Tanh(), nn.Flatten(),
        nn.Linear(32 * 4 * 4, 32), nn.Tanh(), nn.Linear(32, 10))


def scatter_features(x, cache):
    """Kymatio's Scattering2D(J=2, L=8) of [N, 1, 28, 28] images -> [N, 81, 7, 7] (cached)."""
    if cache and os.path.exists(cache):
        f = np.load(cache)
        if f.shape[0] == x.shape[0]:
            print(f"scattering features read from {cache}")
            return torch.from_numpy(f)
    # The 2-D frontend alone: `kymatio.torch` also imports the 3-D one, which needs
    # `scipy.special.sph_harm` (removed in SciPy 1.17).
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
    s = ScatteringTorch2D(J=2, shape=(28, 28), L=8)
    t = time.perf_counter()
    out = torch.cat([s(x[i:i + 1000]).reshape(-1, 81, 7, 7) for i in range(0, len(x), 1000)])
    print(f"kymatio scattering of {len(x)} images: {time.perf_counter() - t:.1f} s")
    if cache:
        os.makedirs(os.path.dirname(cache) or ".", exist_ok=True)
        np.save(cache, out.numpy())
    return out


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def accuracy(m, x, y, dev):
    m.eval()
    with torch.no_grad():
        correct = 0
        for i in range(0, len(x), 1000):
            correct += (m(x[i:i + 1000].to(dev)).argmax(1).cpu() == y[i:i + 1000]).sum().item()
    m.train()
    return correct / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="data/mnist")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--act", default="tanh")
    ap.add_argument("--model", default="convnet", choices=["convnet", "scatter-cnn", "scatter-linear"])
    ap.add_argument("--feature-cache", default=".cache/opacus-kymatio-mnist-{split}.npy")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--noise-multiplier", type=float, default=1.0)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--step-bench", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    xtr, ytr = mnist(a.data_dir, "train")
    xte, yte = mnist(a.data_dir, "test")
    if a.model == "convnet":
        make_model = model
    else:
        # Kymatio on pixels in [0, 1] (undo the normalisation above).
        xtr = scatter_features(xtr * 0.3081 + 0.1307, a.feature_cache.format(split="train"))
        xte = scatter_features(xte * 0.3081 + 0.1307, a.feature_cache.format(split="test"))

        def make_model(act, _kind=a.model):
            return scatter_model(_kind)
    n = len(xtr)
    q = a.batch_size / n
    steps = round(1 / q)
    xg, yg = xtr.to(dev), ytr.to(dev)
    print(f"device {dev} ({torch.cuda.get_device_name() if dev.type == 'cuda' else os.cpu_count()} "
          f"{'GPU' if dev.type == 'cuda' else 'threads'}), torch {torch.__version__}")

    # Non-private PyTorch epoch: shuffled batches of the same size, mean loss, SGD.
    torch.manual_seed(0)
    m = make_model(a.act).to(dev)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    sync(dev)
    t = time.perf_counter()
    perm = torch.randperm(n, device=dev)
    for s in range(0, n, a.batch_size):
        idx = perm[s:s + a.batch_size]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(xg[idx]), yg[idx]).backward()
        opt.step()
    sync(dev)
    t_torch = time.perf_counter() - t
    print(f"pytorch non-private epoch: {t_torch:.2f} s ({n // a.batch_size} steps), "
          f"test acc {100 * accuracy(m, xte, yte, dev):.2f}%")

    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    torch.manual_seed(0)
    m = GradSampleModule(make_model(a.act).to(dev))
    opt = DPOptimizer(torch.optim.SGD(m.parameters(), lr=a.lr), noise_multiplier=a.noise_multiplier,
                      max_grad_norm=a.max_grad_norm, expected_batch_size=a.batch_size)
    gen = torch.Generator(device="cpu").manual_seed(0)
    sync(dev)
    t = time.perf_counter()
    for _ in range(steps):
        mask = torch.rand(n, generator=gen) < q  # Poisson sampling
        idx = mask.nonzero().squeeze(1).to(dev)
        opt.zero_grad(set_to_none=True)
        if len(idx) > 0:
            F.cross_entropy(m(xg[idx]), yg[idx], reduction="sum").backward()
        else:  # an empty lot is still a noisy step
            for p in m.parameters():
                p.grad_sample = torch.zeros((0, *p.shape), device=dev)
        opt.step()
    sync(dev)
    t_opacus = time.perf_counter() - t
    print(f"opacus DP-SGD epoch: {t_opacus:.2f} s ({steps} Poisson steps, q = {q:.5f}, "
          f"sigma {a.noise_multiplier}, C {a.max_grad_norm}), test acc {100 * accuracy(m, xte, yte, dev):.2f}%")

    if a.step_bench:
        x, y = xg[:256], yg[:256]

        def torch_step(mm=make_model(a.act).to(dev), o=None):
            o = o or torch.optim.SGD(mm.parameters(), lr=0.1)
            o.zero_grad(set_to_none=True)
            F.cross_entropy(mm(x), y).backward()
            o.step()
            sync(dev)

        mo = GradSampleModule(make_model(a.act).to(dev))
        oo = DPOptimizer(torch.optim.SGD(mo.parameters(), lr=0.1), noise_multiplier=1.0,
                         max_grad_norm=1.0, expected_batch_size=256)

        def opacus_step():
            oo.zero_grad(set_to_none=True)
            F.cross_entropy(mo(x), y, reduction="sum").backward()
            oo.step()
            sync(dev)

        for name, f in [("pytorch", torch_step), ("opacus", opacus_step)]:
            for _ in range(10):
                f()
            ts = []
            for _ in range(50):
                t = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t)
            print(f"{name} step B=256: {1e3 * statistics.median(ts):.3f} ms (median of 50)")


if __name__ == "__main__":
    main()
