#!/usr/bin/env python3
"""Draw a 10x10 grid from ten one-class `gen_data.safetensors` files (c0/ ... c9/ under the
current folder): the first ten samples of each, one row per class.

Usage: python3 scripts/gen-data-grid.py OUT.png   (needs numpy and pillow; the safetensors header
is parsed by hand, so the `safetensors` package is not needed)."""
import json
import struct
import sys

import numpy as np
from PIL import Image

rows = []
for d in range(10):
    b = open(f"c{d}/gen_data.safetensors", "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8 : 8 + n])
    m = h["images"]
    s, e = m["data_offsets"]
    x = np.frombuffer(b[8 + n + s : 8 + n + e], dtype="<f4").reshape(m["shape"])[:10, 0]
    rows.append(np.concatenate([np.pad(((v + 1) * 127.5).clip(0, 255), 1) for v in x], axis=1))
Image.fromarray(np.concatenate(rows, axis=0).astype(np.uint8)).save(sys.argv[1])
