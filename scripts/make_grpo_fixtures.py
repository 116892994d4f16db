#!/usr/bin/env python3
"""Writes the GRPO fixtures under tests/fixtures/grpo/ from an independent PyTorch implementation
of the formulas the trainer reproduces (EasyR1 as used by SpatialThinker; docs/recipe.md, "Advantages" to "Optimiser and learning-rate schedule"):

- advantages.json: group-normalised advantages (unbiased std, eps 1e-6, all-equal groups -> 0);
- policy_loss.safetensors: per-token clipped policy loss (clip 0.2/0.3, dual clip 3.0) for every
  sign/region combination, its masked token-mean, clip fractions, and d(loss)/d(log_probs);
- low_var_kl.safetensors: k3 KL per token including values clamped at +10, and its gradient;
- update.safetensors: one RL update of a bigram toy policy (8 sequences, 2 mini-batches of 4,
  micro-batches of 2): token-mean per micro-batch averaged over micro-batches, gradient-norm
  clipping at 1.0 and bf16-state Kahan AdamW steps;
- adamw.safetensors: several AdamW steps with bf16 moments and Kahan compensation, for bf16 and
  f32 parameters, and a plain f32 AdamW cross-checked against torch.optim.AdamW.

Run from the repository root: .venv/bin/python scripts/make_grpo_fixtures.py
"""
import json
import math
import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "grpo")
CLIP_LOW, CLIP_HIGH, CLIP_DUAL = 0.2, 0.3, 3.0
KL_COEF = 1e-2


def masked_mean(x, mask):
    return (x * mask).sum() / (mask.sum() + 1e-8)


def group_advantages(scores, uids, eps=1e-6):
    scores = torch.tensor(scores, dtype=torch.float32)
    out = torch.empty_like(scores)
    for uid in sorted(set(uids)):
        idx = torch.tensor([i for i, u in enumerate(uids) if u == uid])
        grp = scores[idx]
        mu, sd = grp.mean(), grp.std(unbiased=True)
        out[idx] = (grp - mu) / (sd + eps)
    return out


def clipped_pg(old_lp, lp, adv):
    """Per-token PPO loss with asymmetric clip and dual clip; returns (loss, hi_flag, lo_flag)."""
    log_ratio = lp - old_lp
    r = torch.exp(log_ratio)
    r_clip = torch.exp(log_ratio.clamp(math.log(1 - CLIP_LOW), math.log(1 + CLIP_HIGH)))
    unclipped, clipped = -adv * r, -adv * r_clip
    pessimistic = torch.maximum(unclipped, clipped)
    dual = -adv * CLIP_DUAL
    neg = adv < 0
    loss = torch.where(neg, torch.minimum(pessimistic, dual), pessimistic)
    hi = (unclipped < clipped).float()
    lo = ((pessimistic > dual) & neg).float()
    return loss, hi, lo


def k3(lp, ref_lp):
    d = ref_lp.float() - lp.float()
    return (torch.exp(d) - d - 1).clamp(-10.0, 10.0)


def anyprecision_adamw_step(p, g, st, lr, betas, eps, wd, state_dtype, kahan):
    """One update of AnyPrecisionAdamW semantics, written from its algorithm description."""
    b1, b2 = betas
    if not st:
        st["step"] = torch.tensor(0.0)
        st["m"] = torch.zeros_like(p, dtype=state_dtype)
        st["v"] = torch.zeros_like(p, dtype=state_dtype)
        if kahan:
            st["c"] = torch.zeros_like(p, dtype=state_dtype)
    st["step"] += 1
    t = st["step"]
    with torch.no_grad():
        if wd:
            p.mul_(1 - lr * wd)
        st["m"].mul_(b1).add_(g, alpha=1 - b1)
        st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
        step_size = lr / (1 - b1 ** t)
        denom = (st["v"].sqrt() / ((1 - b2 ** t) ** 0.5)).add_(eps)
        if kahan:
            st["c"].addcdiv_(st["m"], denom, value=-step_size)
            old = p.clone()
            p.add_(st["c"])
            st["c"].add_(old.sub_(p))
        else:
            p.addcdiv_(st["m"], denom, value=-step_size)


def advantages_fixture():
    cases = [
        {"name": "two_groups", "scores": [1.0, 0.0, 0.5, 2.0, 0.1, 0.2, 0.3, 0.9], "group_ids": [7, 7, 7, 7, 3, 3, 3, 3]},
        {"name": "interleaved", "scores": [0.25, 1.75, 1.0, 0.0, 2.0, 1.5], "group_ids": [1, 2, 1, 2, 1, 2]},
        {"name": "all_equal_group", "scores": [0.7, 0.7, 0.7, 0.7, 1.0, 0.0, 0.0, 0.0], "group_ids": [5, 5, 5, 5, 9, 9, 9, 9]},
        {"name": "pair", "scores": [3.0, -1.0], "group_ids": [0, 0]},
        {"name": "spatial_like_group_of_8", "scores": [0.0, 1.23, 0.61, 1.0, 1.5, 0.0, 0.2, 1.72], "group_ids": [42] * 8},
    ]
    for c in cases:
        c["advantages"] = group_advantages(c["scores"], c["group_ids"]).tolist()
    with open(os.path.join(OUT, "advantages.json"), "w") as f:
        json.dump({"eps": 1e-6, "cases": cases}, f, indent=1)


def policy_loss_fixture():
    # Rows are token positions arranged as [2, 8]; each column exercises one region.
    # (advantage, log-ratio) per token:
    regions = [
        (1.0, 0.05),    # A>0 inside [0.8, 1.3]
        (1.0, 0.5),     # A>0 ratio 1.65 > 1.3: clipped (loss uses 1.3, grad 0)
        (2.0, -0.5),    # A>0 ratio 0.61 < 0.8: max() keeps the unclipped ratio
        (-1.0, 0.1),    # A<0 inside
        (-1.0, -0.6),   # A<0 ratio 0.55 < 0.8: clipped at 0.8 (grad 0)
        (-0.5, 0.6),    # A<0 ratio 1.82 in (1.3, 3): unclipped
        (-1.5, 1.5),    # A<0 ratio 4.48 > 3: dual clip (loss = 3*|A|, grad 0)
        (0.0, 0.3),     # A=0
        (-2.0, 2.0),    # A<0 dual clip again
        (0.5, 0.25),    # A>0 just inside the upper clip
        (0.5, 0.28),    # A>0 just outside the upper clip (ln 1.3 = 0.2624)
        (-0.7, -0.2),   # A<0 just inside the lower clip (ln 0.8 = -0.2231)
        (-0.7, -0.25),  # A<0 just outside the lower clip
        (3.0, 0.0),     # ratio exactly 1
        (1.0, 0.9),     # masked out below
        (-1.0, 3.0),    # masked out below
    ]
    adv = torch.tensor([a for a, _ in regions]).reshape(2, 8)
    delta = torch.tensor([d for _, d in regions]).reshape(2, 8)
    g = torch.Generator().manual_seed(0)
    old_lp = -torch.rand(2, 8, generator=g) * 3 - 0.1
    lp = (old_lp + delta).requires_grad_(True)
    mask = torch.ones(2, 8)
    mask[1, 6:] = 0
    loss, hi, lo = clipped_pg(old_lp, lp, adv)
    pg = masked_mean(loss, mask)
    pg.backward()
    save_file(
        {
            "old_log_probs": old_lp.contiguous(),
            "log_probs": lp.detach().contiguous(),
            "advantages": adv.contiguous(),
            "response_mask": mask,
            "per_token_loss": loss.detach().contiguous(),
            "clip_higher": hi.contiguous(),
            "clip_lower": lo.contiguous(),
            "pg_loss": pg.detach().reshape(1),
            "pg_clipfrac_higher": masked_mean(hi, mask).reshape(1),
            "pg_clipfrac_lower": masked_mean(lo, mask).reshape(1),
            "ppo_kl": masked_mean(-(lp.detach() - old_lp), mask).reshape(1),
            "grad_log_probs": lp.grad.contiguous(),
        },
        os.path.join(OUT, "policy_loss.safetensors"),
    )


def kl_fixture():
    ref = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -0.1, -8.0], [-4.0, -0.2, -1.0, -1.0, -6.0, -0.3]])
    # ref - lp: 0, small +/-, 3 (e^3-4 = 16.1 > 10, clamped), -20 (19 > 10, clamped), 2.3 (inside)
    d = torch.tensor([[0.0, 0.3, -0.4, 3.0, -20.0, 2.3], [1.0, -1.0, 0.05, 2.5, -11.5, -9.0]])
    lp = (ref - d).requires_grad_(True)
    mask = torch.tensor([[1.0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 1]])
    kl = k3(lp, ref)
    kl_loss = masked_mean(kl, mask)
    kl_loss.backward()
    save_file(
        {
            "log_probs": lp.detach().contiguous(),
            "ref_log_probs": ref,
            "response_mask": mask,
            "kl": kl.detach().contiguous(),
            "kl_loss": kl_loss.detach().reshape(1),
            "grad_log_probs": lp.grad.contiguous(),
        },
        os.path.join(OUT, "low_var_kl.safetensors"),
    )


class Bigram(torch.nn.Module):
    """log p(x_t | x_{t-1}) = log_softmax(embed[x_{t-1}] @ lm_head^T)."""

    def __init__(self, vocab, dim, gen):
        super().__init__()
        self.embed = torch.nn.Parameter(torch.randn(vocab, dim, generator=gen) * 0.5)
        self.lm_head = torch.nn.Parameter(torch.randn(vocab, dim, generator=gen) * 0.5)

    def forward(self, prev, tokens):
        logits = self.embed[prev] @ self.lm_head.T
        return torch.log_softmax(logits.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def update_fixture():
    vocab, dim, n, t = 11, 6, 8, 5
    gen = torch.Generator().manual_seed(1)
    model = Bigram(vocab, dim, gen)
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    seqs = torch.randint(0, vocab, (n, t + 1), generator=gen)
    prev, tokens = seqs[:, :-1], seqs[:, 1:]
    lengths = torch.tensor([5, 3, 4, 1, 5, 2, 5, 4])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).float()
    scores = [1.0, 0.0, 0.5, 0.0, 1.2, 1.2, 0.1, 0.9]
    uids = [0, 0, 0, 0, 1, 1, 1, 1]
    adv = group_advantages(scores, uids)[:, None] * mask
    with torch.no_grad():
        old_lp = model(prev, tokens)
        ref_lp = old_lp + torch.randn(n, t, generator=gen) * 0.2
        # perturb the "old" policy so ratios leave the trust region on some tokens
        old_lp = old_lp + torch.randn(n, t, generator=gen) * 0.3
    mini, micro, lr, max_norm = 4, 2, 1e-2, 1.0
    states = {k: {} for k, _ in model.named_parameters()}
    grad_norms, losses = [], []
    for start in range(0, n, mini):
        accum = mini // micro
        for ms in range(start, start + mini, micro):
            sl = slice(ms, ms + micro)
            lp = model(prev[sl], tokens[sl])
            loss, _, _ = clipped_pg(old_lp[sl], lp, adv[sl])
            pg = masked_mean(loss, mask[sl])
            kl = masked_mean(k3(lp, ref_lp[sl]), mask[sl])
            total = pg + KL_COEF * kl
            losses.append(total.item())
            (total / accum).backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        grad_norms.append(norm.item())
        for name, p in model.named_parameters():
            anyprecision_adamw_step(p.data, p.grad, states[name], lr, (0.9, 0.999), 1e-8, 1e-2, torch.bfloat16, True)
        model.zero_grad(set_to_none=True)
    out = {
        "prev_tokens": prev.contiguous(),
        "tokens": tokens.contiguous(),
        "response_mask": mask,
        "old_log_probs": old_lp.contiguous(),
        "ref_log_probs": ref_lp.contiguous(),
        "scores": torch.tensor(scores),
        "group_ids": torch.tensor(uids),
        "grad_norms": torch.tensor(grad_norms),
        "micro_losses": torch.tensor(losses),
    }
    for k, v in init.items():
        out["init." + k] = v.contiguous()
    for k, v in model.named_parameters():
        out["final." + k] = v.detach().contiguous()
        out["final_comp." + k] = states[k]["c"].contiguous()
    save_file(out, os.path.join(OUT, "update.safetensors"))
    with open(os.path.join(OUT, "update.json"), "w") as f:
        json.dump({"vocab": vocab, "dim": dim, "mini_batch": mini, "micro_batch": micro, "lr": lr,
                   "max_grad_norm": max_norm, "kl_coef": KL_COEF, "weight_decay": 1e-2}, f, indent=1)


def adamw_fixture():
    gen = torch.Generator().manual_seed(2)
    steps, lr, wd = 6, 1e-3, 1e-2
    base = 1.0 + torch.rand(4, 7, generator=gen)
    grads = [torch.randn(4, 7, generator=gen) * (0.1 + s) for s in range(steps)]
    grads[3] = grads[3] * 1e-3
    out = {"init": base.clone()}
    for i, g in enumerate(grads):
        out[f"grad.{i}"] = g
    cases = {
        "bf16_param_kahan": (torch.bfloat16, torch.bfloat16, True),
        "f32_param_kahan": (torch.float32, torch.bfloat16, True),
        "bf16_param_plain": (torch.bfloat16, torch.bfloat16, False),
        "f32_plain_f32_states": (torch.float32, torch.float32, False),
    }
    for name, (pdt, sdt, kahan) in cases.items():
        p = base.clone().to(pdt)
        st = {}
        for i, g in enumerate(grads):
            anyprecision_adamw_step(p, g.to(pdt), st, lr, (0.9, 0.999), 1e-8, wd, sdt, kahan)
            out[f"{name}.param.{i}"] = p.float().clone()
            out[f"{name}.exp_avg.{i}"] = st["m"].float().clone()
            out[f"{name}.exp_avg_sq.{i}"] = st["v"].float().clone()
            if kahan:
                out[f"{name}.compensation.{i}"] = st["c"].float().clone()
    # The plain f32 variant must agree with torch's own AdamW.
    q = torch.nn.Parameter(base.clone())
    ref = torch.optim.AdamW([q], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    for g in grads:
        q.grad = g.clone()
        ref.step()
    assert torch.allclose(q.detach(), out[f"f32_plain_f32_states.param.{steps - 1}"], atol=1e-6), "AdamW cross-check"
    # Kahan keeps bf16 parameters moving where plain bf16 updates round away.
    assert not torch.equal(out[f"bf16_param_kahan.param.{steps - 1}"], out[f"bf16_param_plain.param.{steps - 1}"])
    save_file(out, os.path.join(OUT, "adamw.safetensors"))
    with open(os.path.join(OUT, "adamw.json"), "w") as f:
        json.dump({"steps": steps, "lr": lr, "weight_decay": wd, "betas": [0.9, 0.999], "eps": 1e-8,
                   "cases": {k: {"param_dtype": str(v[0]).removeprefix("torch."),
                                 "state_dtype": str(v[1]).removeprefix("torch."), "kahan": v[2]}
                             for k, v in cases.items()}}, f, indent=1)


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    advantages_fixture()
    policy_loss_fixture()
    kl_fixture()
    update_fixture()
    adamw_fixture()
    print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
