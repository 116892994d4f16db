#!/usr/bin/env python3
"""transformers greedy generation on the same checkpoint and inputs as
`spatialthinker bench generate`, then the Rust bench in the same run, and the ratio.

    .venv/bin/python scripts/bench_hf_generate.py --model DIR --batch 8 --new-tokens 128 \
        [--binary target/release/spatialthinker] [--threads N]

Final numbers must be taken on an otherwise idle machine.
"""

import argparse
import json
import subprocess
import time

import torch
from transformers import Qwen2_5_VLForConditionalGeneration


def prompt_ids(b, length):
    # same synthetic prompt as trainer/src/cli/bench.rs `bench_prompt_ids`
    return [(b * 31 + j * 7919) % 1000 for j in range(length)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--binary", default="target/release/spatialthinker")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.dtype == "f32" else torch.bfloat16
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    ids = torch.tensor([prompt_ids(b, args.prompt_len) for b in range(args.batch)], device=args.device)
    mask = torch.ones_like(ids)
    gen = dict(do_sample=False, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
               eos_token_id=None, pad_token_id=0)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, **gen)  # warm-up
        sync()
        t0 = time.perf_counter()
        model(input_ids=ids, attention_mask=mask, use_cache=True)
        sync()
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=mask, **gen)
        sync()
        total = time.perf_counter() - t0
    decode = max(total - prefill, 1e-9)
    hf = {
        "prefill_tokens_per_s": args.batch * args.prompt_len / prefill,
        "decode_tokens_per_s": args.batch * (args.new_tokens - 1) / decode,
    }
    print("transformers", json.dumps(hf))
    out = subprocess.run(
        [args.binary, "bench", "generate", "--model", args.model, "--batch", str(args.batch),
         "--new-tokens", str(args.new_tokens), "--prompt-len", str(args.prompt_len), "--device", args.device,
         "--dtype", args.dtype],
        check=True, capture_output=True, text=True, env={"OMP_NUM_THREADS": str(args.threads),
                                                        **__import__("os").environ},
    )
    ours = json.loads(out.stdout.strip().splitlines()[-1])
    print("spatialthinker", json.dumps(ours))
    print(f"decode speed-up vs transformers: {ours['decode_tokens_per_s'] / hf['decode_tokens_per_s']:.2f}x; "
          f"prefill: {ours['prefill_tokens_per_s'] / hf['prefill_tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
