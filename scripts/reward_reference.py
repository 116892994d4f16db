#!/usr/bin/env python3
"""Run the reference SpatialThinker rewards over a JSONL of cases (differential testing).

The reference files are NOT part of this repository: fetch the public SpatialThinker repository and
copy `verl/utils/reward_score/spatial_sgg.py` and `r1v.py` into a folder outside the repo, then:

    PYTHONPATH=/tmp/pylib python scripts/reward_reference.py --reference-dir /tmp/ref \
        --input cases.jsonl --output ref.jsonl [--reward spatial|r1v]

spaCy is replaced by a stub whose similarity is 1.0 for identical label text and 0.0 otherwise
(what `ExactLabelSimilarity` implements); `r1v` needs PyPI `mathruler` (+ sympy, pylatexenc) on
PYTHONPATH. Rows where the reference raises are written as {"id", "error"}.
"""
import argparse
import importlib.util
import json
import sys
import time
import types


def install_spacy_stub():
    class Doc:
        def __init__(self, text):
            self.text = text

        def similarity(self, other):
            return 1.0 if self.text == other.text else 0.0

    spacy = types.ModuleType("spacy")
    spacy.load = lambda *args, **kwargs: Doc
    sys.modules["spacy"] = spacy


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference-dir", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--reward", default="spatial", choices=["spatial", "r1v"])
    args = ap.parse_args()
    install_spacy_stub()
    if args.reward == "spatial":
        ref = load(f"{args.reference_dir}/spatial_sgg.py", "spatial_sgg")

        def score(row):
            r = ref.spatial_sgg_compute_score(row["response"], row["ground_truth"], row["problem"])
            return {"overall": r["overall"], "format": r["format"], "count": r["count"],
                    "accuracy": r["accuracy"], "spatial": r["spatial_score"]}
    else:
        ref = load(f"{args.reference_dir}/r1v.py", "r1v")

        def score(row):
            r = ref.r1v_compute_score(row["response"], row["ground_truth"])
            return {"overall": r["overall"], "format": r["format"], "count": 0.0,
                    "accuracy": r["accuracy"], "spatial": 0.0}

    with open(args.input, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    out = []
    start = time.perf_counter()
    for row in rows:
        try:
            res = {"id": row["id"], **score(row)}
        except Exception as e:  # the reference raising is a result too
            res = {"id": row["id"], "error": f"{type(e).__name__}: {e}"}
        out.append(res)
    elapsed = time.perf_counter() - start
    with open(args.output, "w", encoding="utf-8") as f:
        for res in out:
            f.write(json.dumps(res, allow_nan=True) + "\n")
    print(f"reference {args.reward}: {len(rows)} rows in {elapsed:.3f}s "
          f"({len(rows) / max(elapsed, 1e-9):.1f} responses/s)", file=sys.stderr)


if __name__ == "__main__":
    main()
