#!/usr/bin/env python3
"""Generates tests/reference/composition.json: reference values from Google's dp_accounting for
src/accounting/composition.rs (composition of pure ε-DP mechanisms).

- `laplace_rdp`: the RDP of the Laplace mechanism per order (dp_accounting's `_laplace_rdp`,
  Mironov 2017 Proposition 6), rows (ε, order, rdp).
- `laplace_rdp_epsilon`: k Laplace releases at ε, converted at δ over Opacus's default orders
  with dp_accounting's `compute_epsilon`, rows (ε, k, δ, ε_total).
- `rr_pld_epsilon`: dp_accounting's PLD of binary randomized response at ε (pessimistic,
  discretisation 1e-4), composed k times, rows (ε, k, δ, ε_total) — against our exact
  optimal-composition formula.
- `laplace_pld_epsilon`: the same for the Laplace mechanism (its own, tighter PLD), rows
  (ε, k, δ, ε_total).

Setup: `pip install dp_accounting` (0.6.0 was used), then
    python3 tests/reference/generate_composition.py
"""
import importlib.metadata as md
import json
import math
import os

from dp_accounting.pld import privacy_loss_distribution as pld
from dp_accounting.rdp import rdp_privacy_accountant as rdp

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
DELTA = 1e-5

out = {"dp_accounting": md.version("dp_accounting"), "delta": DELTA}
out["laplace_rdp"] = [
    [e, a, rdp._laplace_rdp(e, a)]
    for e in [0.01, 0.1, 1.0, 5.0]
    for a in [1.5, 2.0, 10.0, 63.0, 1000.0]
]
out["laplace_rdp_epsilon"] = []
out["rr_pld_epsilon"] = []
out["laplace_pld_epsilon"] = []
for e in [0.1, 1.0]:
    for k in [1, 10, 100, 1000]:
        r = [k * rdp._laplace_rdp(e, a) for a in ORDERS]
        out["laplace_rdp_epsilon"].append([e, k, DELTA, rdp.compute_epsilon(ORDERS, r, DELTA)[0]])
        rr = pld.from_randomized_response(2.0 / (1.0 + math.exp(e)), 2)
        out["rr_pld_epsilon"].append([e, k, DELTA, rr.self_compose(k).get_epsilon_for_delta(DELTA)])
        lap = pld.from_laplace_mechanism(1.0 / e)
        out["laplace_pld_epsilon"].append(
            [e, k, DELTA, lap.self_compose(k).get_epsilon_for_delta(DELTA)]
        )

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "composition.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print("wrote", path)
