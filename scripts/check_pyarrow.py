#!/usr/bin/env python3
"""Check a dataset folder written by `spatialthinker data synth` / `data import` with pyarrow.

Usage: check_pyarrow.py DATASET_DIR
Reads every data/*.parquet file, prints its columns and Arrow types, and exits non-zero unless they
are exactly the 15 STVQA-7K columns (docs/recipe.md, "Dataset schema") plus `reference_response`, with
the published types, and every image decodes with Pillow to the size stated in `problem`.
"""
import glob
import io
import os
import re
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

EXPECTED = [
    ("image_id", pa.string()),
    ("images", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("problem", pa.string()),
    ("question_only", pa.string()),
    ("question_with_options", pa.string()),
    ("options", pa.list_(pa.string())),
    ("answer", pa.string()),
    ("answer_only", pa.string()),
    ("answer_text", pa.string()),
    ("answer_text_only", pa.string()),
    ("answer_option_text", pa.string()),
    ("answer_option_text_only", pa.string()),
    ("category", pa.string()),
    ("level", pa.string()),
    ("rating", pa.int32()),
    ("reference_response", pa.string()),
]


def main() -> int:
    root = sys.argv[1]
    files = sorted(glob.glob(os.path.join(root, "data", "*.parquet")))
    if not files:
        print(f"no parquet files under {root}/data", file=sys.stderr)
        return 1
    ok = True
    for path in files:
        table = pq.read_table(path)
        got = [(f.name, f.type) for f in table.schema]
        print(f"{os.path.basename(path)}: {table.num_rows} rows")
        for name, typ in got:
            print(f"  {name}: {typ}")
        if [n for n, _ in got] != [n for n, _ in EXPECTED]:
            print(f"  column names differ from {[n for n, _ in EXPECTED]}", file=sys.stderr)
            ok = False
        for (name, typ), (_, want) in zip(got, EXPECTED):
            if not typ.equals(want):
                print(f"  column {name}: {typ}, expected {want}", file=sys.stderr)
                ok = False
        for row in table.to_pylist():
            size = re.search(r"Image size: \((.*?) x (.*?)\)", row["problem"])
            img = Image.open(io.BytesIO(row["images"]["bytes"]))
            if size is None or img.size != (int(size.group(1)), int(size.group(2))):
                print(f"  {row['image_id']}: image {img.size} vs prompt {size and size.group(0)}", file=sys.stderr)
                ok = False
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
