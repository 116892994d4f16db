#!/usr/bin/env python3
"""Checks, on a CUDA machine, the flash-attention varlen call the generation engine makes for a
ragged decode step over a token-major KV pool (trainer/src/model/kv_cache.rs,
`KvCache::varlen_decode_attention`), against SDPA with the mask the masked path builds.

The engine's arguments: a pool of R rows x S slots per layer stored [R, S, kv_heads, hd], viewed
as [R*S, kv_heads, hd]; one query per row [R, heads, hd]; cu_seq_q = 0..R; cu_seq_k = 0, S, ...,
R*S (int32); seqused_k = each row's write slot + 1 (int32); max_q = 1; max_k = max(seqused_k);
not causal; default scale. Row r must attend to its slots 0..=pos[r] and nothing else.

Needs only PyTorch with CUDA (no Rust build): `python3 scripts/check_varlen_decode.py`.
Prints one line per case and `varlen_decode_check=ok` (exit 0) or the failing case (exit 1).
"""

import sys

import torch


def case(rows, slots, heads, kv_heads, dim, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    dev = "cuda"
    pool_k = torch.randn(rows, slots, kv_heads, dim, generator=g, device=dev, dtype=dtype)
    pool_v = torch.randn(rows, slots, kv_heads, dim, generator=g, device=dev, dtype=dtype)
    q = torch.randn(rows, heads, dim, generator=g, device=dev, dtype=dtype)
    pos = torch.randint(0, slots, (rows,), generator=g, device=dev)
    used = (pos + 1).to(torch.int32)
    cu_q = torch.arange(rows + 1, device=dev, dtype=torch.int32)
    cu_k = cu_q * slots
    out = torch.empty_like(q)
    torch.ops.aten._flash_attention_forward_no_dropout_inplace(
        out,
        q,
        pool_k.view(rows * slots, kv_heads, dim),
        pool_v.view(rows * slots, kv_heads, dim),
        cu_q,
        cu_k,
        1,
        int(used.max()),
        0.0,
        False,
        False,
        seqused_k=used,
    )
    # the masked path: head-major keys, row r sees slots 0..=pos[r]
    width = int(pos.max()) + 1
    mask = (torch.arange(width, device=dev)[None, :] <= pos[:, None]).view(rows, 1, 1, width)
    want = torch.nn.functional.scaled_dot_product_attention(
        q.float().unsqueeze(2),
        pool_k[:, :width].transpose(1, 2).float(),
        pool_v[:, :width].transpose(1, 2).float(),
        attn_mask=mask,
        enable_gqa=heads != kv_heads,
    ).squeeze(2)
    err = (out.float() - want).abs().max().item()
    return err


def main():
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    ok = True
    cases = [
        # (rows, slots, heads, kv_heads, head_dim): the mid preset and the 7B's attention shape
        (64, 2304, 8, 2, 128),
        (37, 8192, 28, 4, 128),
        (5, 300, 4, 2, 16),
    ]
    for dtype in (torch.bfloat16, torch.float16):
        for i, shape in enumerate(cases):
            err = case(*shape, dtype, seed=i)
            tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
            good = err <= tol
            ok &= good
            print(f"{dtype} rows/slots/heads/kv/hd={shape}: max |varlen - masked| = {err:.2e} "
                  f"(tol {tol}) {'ok' if good else 'FAIL'}")
    print(f"varlen_decode_check={'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
