import json, sys
# usage: decide4.py A.json B.json C.json D.json A_extra B_extra  -> letter of the best 5-seed validation mean (ties: earlier letter)
def counts(p):
    r = json.load(open(p))["runs"]
    assert all(x["eval_split"] == "validation" for x in r)
    return {x["seed"]: round(x["accuracy"] * 5000) for x in r}
def extra(t):
    return {int(s): round(float(v) * 5000) for s, v in (u.split(":") for u in t.split(","))}
arms = {}
for L, p, e in (("A", sys.argv[1], sys.argv[5]), ("B", sys.argv[2], sys.argv[6]), ("C", sys.argv[3], None), ("D", sys.argv[4], None)):
    c = counts(p)
    if e: c.update(extra(e))
    assert sorted(c) == [1, 2, 3, 4, 5], (L, c)
    arms[L] = sum(c.values())
    print(L, sorted(c.items()), arms[L] / 25000, file=sys.stderr)
best = max(arms.values())
print(next(L for L in "ABCD" if arms[L] == best))
