#!/usr/bin/env python3
"""Time per training step of Opacus's DP-DCGAN (`examples/dcgan.py` of Opacus 1.6), with the
models and settings of dpsgd's `examples/dp_dcgan` CPU preset, so the two can be set side by side.

    pip install torch opacus==1.6.0
    python benches/python/dcgan_step.py --data-dir data/mnist --threads 2 --steps 60

The models are `dpsgd::nn::models::dcgan_generator`/`dcgan_discriminator` at 28×28 (ngf = ndf = 32,
nz = 100, GroupNorm with 8 groups where DCGAN has BatchNorm, as in dpsgd and as Opacus requires),
the loop is `dcgan.py`'s: D on the real lot and on G's fakes (errD = errD_real + errD_fake, one
backward, so Opacus sums real_i and fake_i per index before clipping), D's DP-Adam step, then G's
Adam step through D. Opacus's PrivacyEngine with Poisson sampling (expected lot 64 of the digit-8
training images, N = 5 851), C = 1, σ = 0.6543 (the ε = 10 preset's), Adam(2e-4, β (0.5, 0.999)).
Prints the median seconds per step over `--steps` steps after `--warmup` steps, as JSON.
"""
import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
import torch.nn as nn

from opacus_epoch import read_idx  # the same IDX reader (this folder is on sys.path)


def generator(nz, g, groups):
    return nn.Sequential(
        nn.ConvTranspose2d(nz, 4 * g, 7, 1, 0, bias=False), nn.GroupNorm(groups, 4 * g), nn.ReLU(True),
        nn.ConvTranspose2d(4 * g, 2 * g, 4, 2, 1, bias=False), nn.GroupNorm(groups, 2 * g), nn.ReLU(True),
        nn.ConvTranspose2d(2 * g, 1, 4, 2, 1, bias=False), nn.Tanh())


def discriminator(d, groups):
    return nn.Sequential(
        nn.Conv2d(1, d, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=False),
        nn.Conv2d(d, 2 * d, 4, 2, 1, bias=False), nn.GroupNorm(groups, 2 * d), nn.LeakyReLU(0.2, inplace=False),
        nn.Conv2d(2 * d, 1, 7, 1, 0, bias=False), nn.Flatten(), nn.Sigmoid())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data/mnist")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--sigma", type=float, default=0.6543)
    ap.add_argument("--ngf", type=int, default=32)
    ap.add_argument("--ndf", type=int, default=32)
    ap.add_argument("--disable-dp", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)

    from opacus import PrivacyEngine

    x = read_idx(os.path.join(a.data_dir, "train-images-idx3-ubyte")).astype(np.float32)
    y = read_idx(os.path.join(a.data_dir, "train-labels-idx1-ubyte"))
    x = torch.from_numpy(x[y == 8] / 127.5 - 1.0).unsqueeze(1)
    ds = torch.utils.data.TensorDataset(x)
    dl = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=True)

    nz = 100
    netG, netD = generator(nz, a.ngf, 8), discriminator(a.ndf, 8)
    for m in list(netG.modules()) + list(netD.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    if not a.disable_dp:
        pe = PrivacyEngine(secure_mode=False)
        netD, optD, dl = pe.make_private(module=netD, optimizer=optD, data_loader=dl,
                                         noise_multiplier=a.sigma, max_grad_norm=1.0,
                                         poisson_sampling=True)
    crit = nn.BCELoss()
    times = []
    it = iter(dl)
    for step in range(a.warmup + a.steps):
        try:
            (real,) = next(it)
        except StopIteration:
            it = iter(dl)
            (real,) = next(it)
        t0 = time.perf_counter()
        b = real.size(0)
        optD.zero_grad(set_to_none=True)
        noise = torch.randn(b, nz, 1, 1)
        fake = netG(noise)
        out = netD(real).view(-1)
        err_real = crit(out, torch.ones(b))
        out = netD(fake.detach()).view(-1)
        err_fake = crit(out, torch.zeros(b))
        (err_real + err_fake).backward()
        optD.step()
        optD.zero_grad(set_to_none=True)
        optG.zero_grad(set_to_none=True)
        out = netD(fake).view(-1)
        err_g = crit(out, torch.ones(b))
        err_g.backward()
        optG.step()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    print(json.dumps({
        "torch": torch.__version__,
        "threads": a.threads,
        "dp": not a.disable_dp,
        "steps": len(times),
        "median_s_per_step": statistics.median(times),
        "mean_s_per_step": statistics.mean(times),
        "min_s_per_step": min(times),
        "max_s_per_step": max(times),
    }))


if __name__ == "__main__":
    main()
