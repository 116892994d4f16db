#!/usr/bin/env python3
"""Compare two reward JSONL outputs row by row (ours vs the reference): python reward_compare.py A B.

A row agrees when both are errors, or both are scores whose five components differ by at most
1e-6 (NaN equal to NaN). Prints the counts and the first disagreements; exits 1 on any.
"""
import json
import math
import sys

KEYS = ["overall", "format", "count", "accuracy", "spatial"]
TOL = 1e-6


def close(a, b):
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= TOL


def main():
    a = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
    b = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8") if l.strip()]
    cases = {}
    if len(sys.argv) > 3:
        cases = {json.loads(l)["id"]: json.loads(l) for l in open(sys.argv[3], encoding="utf-8") if l.strip()}
    if len(a) != len(b):
        print(f"row counts differ: {len(a)} vs {len(b)}")
        sys.exit(1)
    both_err = both_ok = 0
    bad = []
    for x, y in zip(a, b):
        if x["id"] != y["id"]:
            bad.append((x, y))
        elif "error" in x or "error" in y:
            if "error" in x and "error" in y:
                both_err += 1
            else:
                bad.append((x, y))
        elif all(close(x[k], y[k]) for k in KEYS):
            both_ok += 1
        else:
            bad.append((x, y))
    print(f"rows {len(a)}: agree {both_ok + both_err} (scores {both_ok}, both raise {both_err}), "
          f"disagree {len(bad)}")
    for x, y in bad[:15]:
        print("  ours:", json.dumps(x))
        print("  ref: ", json.dumps(y))
        if x["id"] in cases:
            print("  case:", json.dumps(cases[x["id"]])[:600])
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
