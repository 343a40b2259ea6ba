#!/usr/bin/env python3
"""Generates tests/reference/accounting.json: reference values from Opacus 1.6 and Google's
dp_accounting for the accountants in src/accounting, plus timings of Opacus's calls.

Setup (torch is never imported; Opacus's analysis modules need only numpy/scipy):
    python3.11 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install numpy scipy dp_accounting
    mkdir -p /tmp/opacus_whl && cd /tmp/opacus_whl && /tmp/refvenv/bin/pip download --no-deps opacus==1.6.0
    unzip -o opacus-1.6.0-*.whl
    OPACUS_DIR=/tmp/opacus_whl /tmp/refvenv/bin/python tests/reference/generate.py

The Laplace PLD entries ("pld_laplace", for src/accounting/pld.rs `epsilon_pld_laplace`) need
only dp_accounting and are (re)generated on their own, keeping every other entry of the file:
    pip install dp-accounting==0.6.0
    python3 tests/reference/generate.py --laplace-only
"""
import importlib.metadata as md
import json
import os
import sys
import time
import types
import warnings

warnings.filterwarnings("ignore")
JSON_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "accounting.json")
LAPLACE_DP_ACCOUNTING = "0.6.0"


def laplace_entries():
    """dp_accounting's PLD of the (Poisson-subsampled) Laplace mechanism, sensitivity 1,
    parameter b = noise multiplier, add/remove adjacency (the PLD holds both directions and
    get_epsilon_for_delta reports the worse); pessimistic (connect-the-dots, an upper bound) and
    optimistic (a lower bound) estimates at value_discretization_interval 1e-4."""
    import dp_accounting  # noqa: F401
    from dp_accounting.pld import privacy_loss_distribution as pld_lib
    version = md.version("dp_accounting")
    assert version == LAPLACE_DP_ACCOUNTING, f"pin dp-accounting=={LAPLACE_DP_ACCOUNTING}, have {version}"

    def bound(history, delta, pessimistic):
        pld = None
        for q, b, t in history:
            one = pld_lib.from_laplace_mechanism(
                b, sensitivity=1.0, pessimistic_estimate=pessimistic,
                value_discretization_interval=1e-4, sampling_prob=q)
            one = one.self_compose(t) if t > 1 else one
            pld = one if pld is None else pld.compose(one)
        return float(pld.get_epsilon_for_delta(delta))

    points = []
    for q, b, steps, delta in [
        (1.0, 1.0, 1, 1e-5),
        (1.0, 10.0, 10, 1e-5),
        (1.0, 20.0, 100, 1e-6),
        (0.5, 2.0, 20, 1e-5),
        (0.1, 1.0, 100, 1e-5),
        (0.01, 0.5, 1000, 1e-5),
        (0.01, 2.0, 3000, 1e-5),
        (0.001, 0.3, 10000, 1e-5),
        (64 / 60000, 1.0, 13126, 1e-5),
        (0.02, 5.0, 2000, 1e-6),
    ]:
        h = [(q, b, steps)]
        up, lo = bound(h, delta, True), bound(h, delta, False)
        points.append(dict(q=q, b=b, steps=steps, delta=delta,
                           dp_accounting_pessimistic=up, dp_accounting_optimistic=lo))
        print("laplace", q, b, steps, delta, up, lo, flush=True)
    hist = [(0.01, 1.0, 500), (0.05, 3.0, 200), (1.0, 50.0, 5)]
    return dict(
        versions=dict(dp_accounting=version, numpy=md.version("numpy"), scipy=md.version("scipy"),
                      python=sys.version.split()[0]),
        interval=1e-4,
        points=points,
        history=dict(history=[list(x) for x in hist], delta=1e-5,
                     dp_accounting_pessimistic=bound(hist, 1e-5, True),
                     dp_accounting_optimistic=bound(hist, 1e-5, False)),
    )


if "--laplace-only" in sys.argv:
    with open(JSON_PATH) as f:
        out = json.load(f)
    out["pld_laplace"] = laplace_entries()
    with open(JSON_PATH, "w") as f:
        json.dump(out, f, indent=1)
    sys.exit(0)

OPACUS_DIR = os.environ.get("OPACUS_DIR", "/tmp/opacus_whl")

# Stub the parts of the opacus package that would pull in torch.
pkg = types.ModuleType("opacus")
pkg.__path__ = [os.path.join(OPACUS_DIR, "opacus")]
sys.modules["opacus"] = pkg
opt = types.ModuleType("opacus.optimizers")
opt.DPOptimizer = type("DPOptimizer", (), {})
sys.modules["opacus.optimizers"] = opt

from opacus.accountants.rdp import RDPAccountant  # noqa: E402
from opacus.accountants.prv import PRVAccountant  # noqa: E402
from opacus.accountants.utils import get_noise_multiplier  # noqa: E402
from opacus.accountants.analysis import rdp as opacus_rdp  # noqa: E402

import dp_accounting  # noqa: E402
from dp_accounting.pld import privacy_loss_distribution as pld_lib  # noqa: E402

assert "torch" not in sys.modules


def timed(f, repeat=1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
    return out, best


def rdp_eps(history, delta):
    acc = RDPAccountant()
    acc.history = [(s, q, t) for (q, s, t) in history]
    eps, order = acc.get_privacy_spent(delta=delta)
    return float(eps), float(order)


def prv_eps(history, delta):
    acc = PRVAccountant()
    acc.history = [(s, q, t) for (q, s, t) in history]
    return float(acc.get_epsilon(delta=delta))


def pld_acc_eps(history, delta, interval=1e-4):
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=interval)
    for q, s, t in history:
        ev = dp_accounting.GaussianDpEvent(s)
        if q < 1.0:
            ev = dp_accounting.PoissonSampledDpEvent(q, ev)
        acc.compose(ev, t)
    return float(acc.get_epsilon(delta))


def pld_bound(history, delta, pessimistic, interval=1e-4):
    pld = None
    for q, s, t in history:
        one = pld_lib.from_gaussian_mechanism(
            s, sampling_prob=q, pessimistic_estimate=pessimistic,
            value_discretization_interval=interval)
        one = one.self_compose(t) if t > 1 else one
        pld = one if pld is None else pld.compose(one)
    return float(pld.get_epsilon_for_delta(delta))


out = {
    "versions": {
        "opacus": "1.6.0",
        "dp_accounting": md.version("dp_accounting"),
        "numpy": md.version("numpy"),
        "scipy": md.version("scipy"),
        "python": sys.version.split()[0],
    },
    "default_alphas": [float(a) for a in RDPAccountant.DEFAULT_ALPHAS],
}

# --- RDP: single entries (q, sigma, steps, delta) ---
rdp_points = []
for q in [1.0, 0.5, 0.1, 0.01, 0.004, 1e-4]:
    for sigma in [0.6, 0.8, 1.0, 1.1, 2.0, 5.0]:
        for steps in [1, 100, 10000]:
            for delta in [1e-5, 1e-6]:
                eps, order = rdp_eps([(q, sigma, steps)], delta)
                rdp_points.append(dict(q=q, sigma=sigma, steps=steps, delta=delta, epsilon=eps, order=order))
out["rdp"] = rdp_points

# raw per-order RDP (one step) for a few (q, sigma)
raw = []
for q, sigma in [(0.01, 1.0), (0.1, 0.6), (1e-4, 0.8), (0.5, 2.0), (0.004, 1.1)]:
    r = opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS)
    raw.append(dict(q=q, sigma=sigma, rdp=[float(x) for x in r]))
out["rdp_raw"] = raw

# heterogeneous histories [(q, sigma, steps)]
histories = [
    [(0.01, 1.0, 500), (0.02, 1.5, 300), (0.01, 0.8, 10)],
    [(1.0, 3.0, 5), (0.001, 0.7, 2000)],
    [(0.05, 1.2, 1), (0.05, 1.3, 1), (0.05, 1.2, 100)],
]
out["rdp_history"] = []
for h in histories:
    eps, order = rdp_eps(h, 1e-5)
    out["rdp_history"].append(dict(history=[list(x) for x in h], delta=1e-5, epsilon=eps, order=order))

# --- PLD / PRV points ---
pld_points = []
for q, sigma, steps, delta in [
    (0.01, 1.0, 10000, 1e-5),
    (0.004, 1.1, 1000, 1e-5),
    (1.0, 2.0, 100, 1e-5),
    (1.0, 5.0, 1, 1e-6),
    (1e-4, 0.8, 10000, 1e-5),
    (0.1, 0.6, 10, 1e-5),
    (0.01, 0.8, 1000, 1e-6),
    (0.5, 3.0, 50, 1e-5),
    (0.001, 1.0, 1, 1e-5),
    (0.02, 0.9, 2500, 1e-5),
]:
    h = [(q, sigma, steps)]
    prv, t_prv = timed(lambda: prv_eps(h, delta))
    acc = pld_acc_eps(h, delta)
    upper = pld_bound(h, delta, True)
    lower = pld_bound(h, delta, False)
    rdp, _ = rdp_eps(h, delta)
    pld_points.append(dict(q=q, sigma=sigma, steps=steps, delta=delta, opacus_prv=prv, opacus_prv_seconds=t_prv,
                           dp_accounting_pld=acc, dp_accounting_pessimistic=upper, dp_accounting_optimistic=lower,
                           opacus_rdp=rdp))
    print("pld", q, sigma, steps, delta, prv, acc, upper, lower, rdp, f"{t_prv:.2f}s", flush=True)
out["pld"] = pld_points
out["pld_history"] = []
for h in histories:
    out["pld_history"].append(dict(history=[list(x) for x in h], delta=1e-5,
                                   dp_accounting_pessimistic=pld_bound(h, 1e-5, True),
                                   dp_accounting_optimistic=pld_bound(h, 1e-5, False),
                                   opacus_prv=prv_eps(h, 1e-5)))

# --- calibration (Opacus get_noise_multiplier, epsilon_tolerance 0.01) ---
cal = []
for eps, delta, q, steps in [(1.0, 1e-5, 0.01, 1000), (3.0, 1e-5, 0.004, 10000), (8.0, 1e-5, 0.1, 100),
                             (0.5, 1e-6, 1.0, 10), (2.0, 1e-5, 0.02, 2500)]:
    s_rdp, t_rdp = timed(lambda: get_noise_multiplier(target_epsilon=eps, target_delta=delta, sample_rate=q,
                                                      steps=steps, accountant="rdp"))
    rec = dict(epsilon=eps, delta=delta, q=q, steps=steps, opacus_rdp_sigma=float(s_rdp), opacus_rdp_seconds=t_rdp)
    if steps <= 2500:
        s_prv, t_prv = timed(lambda: get_noise_multiplier(target_epsilon=eps, target_delta=delta, sample_rate=q,
                                                          steps=steps, accountant="prv"))
        rec.update(opacus_prv_sigma=float(s_prv), opacus_prv_seconds=t_prv)
    cal.append(rec)
    print("cal", rec, flush=True)
out["calibration"] = cal

# --- timings of the calls benchmarked in benches/accounting.rs ---
_, t4 = timed(lambda: rdp_eps([(0.01, 1.0, 10_000)], 1e-5), repeat=5)
_, t6 = timed(lambda: rdp_eps([(0.01, 1.0, 1_000_000)], 1e-5), repeat=5)
_, tp = timed(lambda: prv_eps([(0.01, 1.0, 10_000)], 1e-5), repeat=3)
_, tpa = timed(lambda: pld_acc_eps([(0.01, 1.0, 10_000)], 1e-5), repeat=3)
_, tc = timed(lambda: get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5, sample_rate=0.01,
                                           steps=10_000, accountant="rdp"), repeat=3)
out["timings_seconds"] = {
    "opacus_rdp_eps_1e4_steps": t4,
    "opacus_rdp_eps_1e6_steps": t6,
    "opacus_prv_eps_1e4_steps": tp,
    "dp_accounting_pld_eps_1e4_steps": tpa,
    "opacus_rdp_calibration_eps3_q0.01_1e4_steps": tc,
    "note": "q=0.01, sigma=1.0, delta=1e-5; best of repeats; single process on this machine",
}
print(out["timings_seconds"], flush=True)
out["pld_laplace"] = laplace_entries()
with open(JSON_PATH, "w") as f:
    json.dump(out, f, indent=1)
