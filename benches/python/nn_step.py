#!/usr/bin/env python3
"""Time one training step of Opacus's SampleConvNet at B = 256 on 1x28x28 with PyTorch
(non-private) and Opacus 1.6 (DP-SGD), on the CPU, next to dpsgd's criterion bench.

    pip install torch opacus==1.6.0
    python benches/python/nn_step.py            # PyTorch + Opacus
    python benches/python/nn_step.py --rust     # ... and `cargo bench --bench nn`, with ratios

Steps timed (median of --iters after --warmup):
- torch:  zero_grad, forward, cross_entropy (mean), backward, SGD step;
- opacus: the same through GradSampleModule + DPOptimizer (per-sample gradients by hooks,
  flat clipping C = 1, noise multiplier 1, SGD step): what dpsgd's `dp_step_noisy` bench does.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def sample_conv_net(act=nn.ReLU):
    return nn.Sequential(
        nn.Conv2d(1, 16, 8, 2, padding=3), act(), nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, 2), act(), nn.MaxPool2d(2, 1), nn.Flatten(),
        nn.Linear(32 * 4 * 4, 32), act(), nn.Linear(32, 10))


def timeit(step, warmup, iters):
    for _ in range(warmup):
        step()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--rust", action="store_true", help="also run cargo bench --bench nn")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    b = a.batch
    x = torch.rand(b, 1, 28, 28)
    y = torch.randint(0, 10, (b,))
    res = {}

    net = sample_conv_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def torch_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    res["torch"] = timeit(torch_step, a.warmup, a.iters)

    import opacus
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    gsm = GradSampleModule(sample_conv_net())
    dpo = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.1), noise_multiplier=1.0,
                      max_grad_norm=1.0, expected_batch_size=b)

    def opacus_step():
        dpo.zero_grad(set_to_none=True)
        F.cross_entropy(gsm(x), y).backward()
        dpo.step()

    res["opacus"] = timeit(opacus_step, a.warmup, a.iters)
    print(f"# torch {torch.__version__}, opacus {opacus.__version__}, {a.threads} threads, B = {b}")
    for k, v in res.items():
        print(f"{k:8} {v:8.2f} ms/step  {b / v * 1e3:9.0f} examples/s")

    if a.rust:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        out = subprocess.run(["cargo", "bench", "--bench", "nn", "--", "step"], cwd=root,
                             capture_output=True, text=True, check=True).stdout
        for name, mid, unit in re.findall(r"b256/(\w+)\s+time:\s+\[\S+ \S+ (\S+) (\w+)", out):
            ms = float(mid) * {"ms": 1.0, "µs": 1e-3, "us": 1e-3, "s": 1e3}[unit]
            print(f"dpsgd/{name:18} {ms:8.2f} ms/step  {b / ms * 1e3:9.0f} examples/s  "
                  f"opacus/dpsgd {res['opacus'] / ms:5.2f}x  torch/dpsgd {res['torch'] / ms:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
