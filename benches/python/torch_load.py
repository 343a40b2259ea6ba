#!/usr/bin/env python3
"""Loads a model that `dpsgd train` saved (runs/NAME/model.safetensors) into PyTorch's
`nn.Sequential` of the same architecture with `load_state_dict(strict=True)`, evaluates it on
the test set in PyTorch, and checks that the accuracy equals the one dpsgd reported for its last
epoch (metrics.jsonl) to within 0.05 points (the two frameworks' float sums differ in order, so a
handful of near-tie test images may flip). Exits 1 on a mismatch.

    python benches/python/torch_load.py runs/NAME --data-dir data/mnist

The safetensors file is parsed with the standard library and numpy (8-byte header length,
JSON header, raw little-endian data), so only torch and numpy are needed. Not part of
`cargo test` (no PyTorch there); BENCHMARKS.md records when it was run.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from opacus_epoch import model as sample_conv_net  # noqa: E402
from opacus_epoch import read_idx  # noqa: E402

# As dpsgd normalises (src/data/dataset.rs).
NORMALIZATION = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] != "F32":
            raise ValueError(f"{name}: dtype {t['dtype']}, expected F32")
        a, b = t["data_offsets"]
        arr = np.frombuffer(data[a:b], dtype="<f4").reshape(t["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="the --out folder of a finished `dpsgd train` run")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    cfg = json.load(open(os.path.join(args.run, "config.json")))
    kind = cfg["data"]["idx"]["kind"]  # "mnist" or "fashion-mnist"
    act = {"tanh-convnet": "tanh", "sample-convnet": "relu"}[cfg["model"]]
    last = [json.loads(l) for l in open(os.path.join(args.run, "metrics.jsonl"))][-1]
    if last.get("eval_split") != "test":
        sys.exit(f"{args.run}: its last epoch was evaluated on '{last.get('eval_split')}', not the test set")
    d = args.data_dir or cfg["data"]["idx"].get("dir") or (
        "data/mnist" if kind == "mnist" else "/usr/share/datasets/fashion-mnist")
    mean, std = NORMALIZATION[kind]
    x = read_idx(os.path.join(d, "t10k-images-idx3-ubyte")).astype(np.float32)
    y = read_idx(os.path.join(d, "t10k-labels-idx1-ubyte")).astype(np.int64)
    x = torch.from_numpy((x / 255.0 - mean) / std).unsqueeze(1)
    y = torch.from_numpy(y)

    m = sample_conv_net(act)
    state = read_safetensors(os.path.join(args.run, "model.safetensors"))
    m.load_state_dict(state, strict=True)  # names and shapes must match PyTorch's exactly
    m.eval()
    with torch.no_grad():
        acc = (m(x).argmax(1) == y).double().mean().item()
    ours = last["eval_accuracy"]
    print(f"{args.run}: PyTorch test accuracy {acc * 100:.2f}%, dpsgd reported {ours * 100:.2f}%"
          f" ({len(state)} tensors loaded strictly into {cfg['model']})")
    if abs(acc - ours) > 0.0005:
        sys.exit("mismatch: the saved model does not behave the same in PyTorch")


if __name__ == "__main__":
    main()
