import json, sys, statistics as st, os
for d in sys.argv[1:]:
    r = json.load(open(f"{d}/repeats.json"))
    accs = []
    print(f"## {d}")
    for run in r["runs"]:
        m = [json.loads(l) for l in open(os.path.join(run["dir"], "metrics.jsonl"))]
        n = len(m)
        every = [f'{x["eval_accuracy"]*100:.2f}' for x in m if x["epoch"] % 5 == 0]
        t = st.median(x["train_seconds"] for x in m)
        accs.append(run["accuracy"] * 100)
        print(f'seed {run["seed"]}: {run["accuracy"]*100:.2f}  [{" ".join(every)}]  sigma {m[-1]["noise_multiplier"]:.4f}  eps {run["epsilon_rdp"]:.3f}/{run["epsilon_prv"]:.3f}  med epoch {t:.2f}s  epochs {n}  split {run["eval_split"]}')
    if len(accs) > 1:
        print(f"mean {st.mean(accs):.3f} std {st.stdev(accs):.3f} min {min(accs):.2f} max {max(accs):.2f}  n {len(accs)}")
