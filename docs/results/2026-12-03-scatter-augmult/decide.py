import json, sys
# usage: decide.py A_repeats.json B_repeats.json [A_extra_acc,...] [B_extra_acc,...]
# counts of correct validation examples (of 5000), so ties are exact
def counts(p):
    r = json.load(open(p))["runs"]
    assert all(x["eval_split"] == "validation" for x in r)
    return [(x["seed"], round(x["accuracy"] * 5000)) for x in r]
a = counts(sys.argv[1]); b = counts(sys.argv[2])
if len(sys.argv) > 3:
    a += [(int(s), round(float(v) * 5000)) for s, v in (t.split(":") for t in sys.argv[3].split(","))]
    b += [(int(s), round(float(v) * 5000)) for s, v in (t.split(":") for t in sys.argv[4].split(","))]
assert len(a) == 5 and len(b) == 5, (a, b)
sa = sum(c for _, c in a); sb = sum(c for _, c in b)
print("A", sorted(a), sa / 25000, file=sys.stderr)
print("B", sorted(b), sb / 25000, file=sys.stderr)
print("B" if sb > sa else "A")
