#!/usr/bin/env python3
"""Builds the tiny Qwen2.5-VL checkpoints and golden outputs under tests/fixtures/qwen25vl/.

Run from the repository root with the project venv:

    .venv/bin/python scripts/make_fixtures.py

Pinned reference: torch 2.13.0, transformers 5.23.0, Pillow 13.0.0 (checked at start). Everything
runs on CPU in float32 with eager attention, so the Rust port can be held to 1e-4.

Two random models are built with transformers itself:
* `tiny7b`: untied lm_head (like Qwen2.5-VL-7B), a small vocabulary of 1024 ids with the special
  ids remapped into it (image 1002, ...), text hidden 64, 2 layers, 4 heads, 2 kv heads,
  mrope_section [2, 3, 3]; vision depth 2, hidden 32, 4 heads, fullatt_block_indexes [1].
  Written in the published key layout (single file and sharded) and in the transformers
  4.52-4.57 layout (`model.language_model.*`, `model.visual.*`, single file and sharded).
* `tiny3b`: tied embeddings (like Qwen2.5-VL-3B) with the real vocabulary (151936 rows) and real
  special ids, so the real tokenizer works with it (CLI tests); text hidden 16 keeps it ~10 MB.

Goldens (`golden_*.safetensors`) hold, per case: input_ids, attention_mask, pixel_values,
image_grid_thw, position_ids, rope_deltas, the vision tower output, logits, a 32-token greedy
continuation and teacher-forced response log-probs. Also `keys_7b.json` / `keys_3b.json`: the
exact tensor names and shapes of the published checkpoints, from models built on the meta device.
"""

import json
import os
import re
import shutil
import sys

import numpy as np
import torch
import transformers
import PIL
from PIL import Image
from safetensors.torch import save_file

PINNED = {"torch": "2.13.0", "transformers": "5.23.0", "PIL": "13.0.0"}
for mod, want in [(torch, PINNED["torch"]), (transformers, PINNED["transformers"]), (PIL, PINNED["PIL"])]:
    have = mod.__version__.split("+")[0]
    if have != want:
        sys.exit(f"{mod.__name__} {have} installed, fixtures are pinned to {want}")

from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "qwen25vl")
torch.set_num_threads(1)

# Published key layout <- module-tree layout (transformers 4.52-4.57 saves the latter).
def published_name(key: str) -> str:
    key = re.sub(r"^model\.language_model\.", "model.", key)
    key = re.sub(r"^model\.visual\.", "visual.", key)
    return key


def legacy_452_name(key: str) -> str:
    key = re.sub(r"^visual\.", "model.visual.", key)
    key = re.sub(r"^model\.(?!language_model\.|visual\.)", "model.language_model.", key)
    return key


def config_dict(*, vocab, hidden, inter, layers, heads, kv, mrope, v_hidden, v_inter, v_depth, v_heads,
                fullatt, tie, ids):
    return dict(
        architectures=["Qwen2_5_VLForConditionalGeneration"],
        model_type="qwen2_5_vl",
        tie_word_embeddings=tie,
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        text_config=dict(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv, hidden_act="silu", rms_norm_eps=1e-6,
            max_position_embeddings=128000, tie_word_embeddings=tie,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
            bos_token_id=ids["bos"], eos_token_id=ids["eos"], use_sliding_window=False,
            sliding_window=32768, max_window_layers=layers,
        ),
        vision_config=dict(
            depth=v_depth, hidden_size=v_hidden, intermediate_size=v_inter, num_heads=v_heads,
            hidden_act="silu", in_channels=3, patch_size=14, temporal_patch_size=2, spatial_merge_size=2,
            window_size=112, fullatt_block_indexes=fullatt, tokens_per_second=2, out_hidden_size=hidden,
        ),
    )


SMALL_IDS = dict(image=1002, video=1003, vision_start=1000, vision_end=1001, bos=1004, eos=1005)
REAL_IDS = dict(image=151655, video=151656, vision_start=151652, vision_end=151653, bos=151643, eos=151645)


def build(cfg_dict, seed):
    torch.manual_seed(seed)
    cfg = Qwen2_5_VLConfig(**cfg_dict)
    cfg._attn_implementation = "eager"
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval().float()
    # transformers' init leaves RMSNorm weights at 1 and biases at 0; randomise them so the
    # goldens exercise every tensor.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_q" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name or "ln_q" in name else 0.0))
    model.config._attn_implementation = "eager"
    model.model.visual.config._attn_implementation = "eager"
    model.model.language_model.config._attn_implementation = "eager"
    return model


def state_dict_published(model):
    sd = {}
    for k, v in model.state_dict().items():
        name = published_name(k)
        if model.config.tie_word_embeddings and name == "lm_head.weight":
            continue
        sd[name] = v.detach().contiguous().clone()
    return sd


def write_checkpoint(model, folder, layout, shards):
    os.makedirs(folder, exist_ok=True)
    sd = state_dict_published(model)
    if layout == "v452":
        sd = {legacy_452_name(k): v for k, v in sd.items()}
    names = sorted(sd)
    if shards == 1:
        save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        per = (len(names) + shards - 1) // shards
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: sd[n] for n in names[s * per:(s + 1) * per]}
            save_file(part, os.path.join(folder, fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in part})
        total = sum(v.numel() * v.element_size() for v in sd.values())
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    model.config.save_pretrained(folder)


def images():
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), "RGB")  # resized
    gray = Image.fromarray(rng.integers(0, 256, (60, 45), dtype=np.uint8), "L")
    rgba = Image.fromarray(rng.integers(0, 256, (56, 84, 4), dtype=np.uint8), "RGBA")  # 28-multiple
    big = Image.fromarray(rng.integers(0, 256, (100, 130, 3), dtype=np.uint8), "RGB")
    return {"rgb": rgb, "gray": gray, "rgba": rgba, "big": big}


PROC = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64)


def prompt_ids(rng, ids, n_images_tokens, text_vocab, lens):
    """[text][vs][pad * n][ve][text] per image, then trailing text."""
    out = []
    for n, ln in zip(n_images_tokens, lens):
        out += rng.integers(0, text_vocab, ln).tolist()
        out += [ids["vision_start"]] + [ids["image"]] * n + [ids["vision_end"]]
    out += rng.integers(0, text_vocab, 5).tolist()
    return out


def left_pad(rows, pad):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


# Ids the tokenizer can produce; embedding rows from here on are untrained and the port masks them
# (greedy never picks them, log-softmax excludes them).
TOKENIZER_VOCAB = 151665


def make_case(model, ids, text_vocab, image_rows, seed, logits_keep, temperature=0.7, resp_len=8):
    """image_rows: per batch row, a list of PIL images."""
    vocab = model.config.text_config.vocab_size
    untrained = list(range(TOKENIZER_VOCAB, vocab))
    rng = np.random.default_rng(seed)
    flat = [im for row in image_rows for im in row]
    proc = PROC(images=flat, return_tensors="pt")
    pixel_values, grid = proc["pixel_values"].float(), proc["image_grid_thw"].long()
    tokens = (grid.prod(-1) // 4).tolist()
    rows, k = [], 0
    for i, row in enumerate(image_rows):
        n = tokens[k:k + len(row)]
        k += len(row)
        rows.append(prompt_ids(rng, ids, n, text_vocab, [3 + 2 * i + j for j in range(len(row))]))
    pad = ids["bos"]
    input_ids, mask = left_pad(rows, pad)
    mm = (input_ids == ids["image"]).long() * mask

    inner = model.model
    with torch.no_grad():
        pos, deltas = inner.get_rope_index(input_ids, mm_token_type_ids=mm, image_grid_thw=grid,
                                           attention_mask=mask)
        vision = inner.visual(pixel_values, grid_thw=grid).pooler_output
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=pos, pixel_values=pixel_values,
                    image_grid_thw=grid, mm_token_type_ids=mm)
        logits = out.logits.float()
        if logits_keep is not None:
            logits = logits[:, -logits_keep:, :]
        gen = model.generate(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values,
                             image_grid_thw=grid, mm_token_type_ids=mm, do_sample=False, max_new_tokens=32,
                             min_new_tokens=32, eos_token_id=None, pad_token_id=pad,
                             suppress_tokens=untrained or None)
        greedy = gen[:, input_ids.shape[1]:]

        # teacher-forced response log-probs: prompt + response in one forward, left-padded
        responses = [rng.integers(0, text_vocab, resp_len).tolist() for _ in rows]
        full_rows = [r + s for r, s in zip(rows, responses)]
        f_ids, f_mask = left_pad(full_rows, pad)
        f_mm = (f_ids == ids["image"]).long() * f_mask
        f_pos, _ = inner.get_rope_index(f_ids, mm_token_type_ids=f_mm, image_grid_thw=grid, attention_mask=f_mask)
        f_logits = model(input_ids=f_ids, attention_mask=f_mask, position_ids=f_pos, pixel_values=pixel_values,
                         image_grid_thw=grid, mm_token_type_ids=f_mm).logits.float()
        f_logits[..., TOKENIZER_VOCAB:] = float("-inf")
        width = f_ids.shape[1]
        lp = torch.log_softmax(f_logits[:, width - resp_len - 1:width - 1, :] / temperature, dim=-1)
        resp = torch.tensor(responses)
        resp_lp = lp.gather(-1, resp.unsqueeze(-1)).squeeze(-1)

    return {
        "input_ids": input_ids, "attention_mask": mask, "pixel_values": pixel_values,
        "image_grid_thw": grid, "position_ids": pos, "rope_deltas": deltas.reshape(-1).long(),
        "vision_out": vision.float(), "logits": logits.contiguous(), "greedy": greedy.contiguous(),
        "response_ids": resp, "response_logprobs": resp_lp.contiguous(),
        "response_temperature": torch.tensor([temperature], dtype=torch.float64),
    }


def key_list(cfg_dict):
    cfg = Qwen2_5_VLConfig(**cfg_dict)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    return {n: list(v.shape) for n, v in state_dict_published(model).items()}


def main():
    # Everything here is generated except the hand-written published configs (config_*_published.json).
    os.makedirs(OUT, exist_ok=True)
    for entry in os.listdir(OUT):
        path = os.path.join(OUT, entry)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif not entry.endswith("_published.json"):
            os.remove(path)

    # Published-shape key lists (7B untied, 3B tied).
    real = dict(v_hidden=1280, v_inter=3420, v_depth=32, v_heads=16, fullatt=[7, 15, 23, 31], ids=REAL_IDS,
                mrope=[16, 24, 24])
    k7 = key_list(config_dict(vocab=152064, hidden=3584, inter=18944, layers=28, heads=28, kv=4, tie=False,
                              **real))
    k3 = key_list(config_dict(vocab=151936, hidden=2048, inter=11008, layers=36, heads=16, kv=2, tie=True,
                              **real))
    assert len(k7) == 729 and len(k3) == 824, (len(k7), len(k3))
    for name, keys in [("keys_7b.json", k7), ("keys_3b.json", k3)]:
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(keys, f, indent=0, sort_keys=True)

    ims = images()

    small = build(config_dict(vocab=1024, hidden=64, inter=128, layers=2, heads=4, kv=2, mrope=[2, 3, 3],
                              v_hidden=32, v_inter=64, v_depth=2, v_heads=4, fullatt=[1], tie=False,
                              ids=SMALL_IDS), seed=1)
    for folder, layout, shards in [("tiny7b", "published", 1), ("tiny7b_sharded", "published", 3),
                                   ("tiny7b_v452", "v452", 1), ("tiny7b_v452_sharded", "v452", 2)]:
        write_checkpoint(small, os.path.join(OUT, folder), layout, shards)
    cases = {
        "rgb": [[ims["rgb"]]],
        "gray": [[ims["gray"]]],
        "rgba": [[ims["rgba"]]],
        "batch": [[ims["rgb"], ims["big"]], [ims["gray"]]],  # two sizes in one row, left padding in row 1
    }
    golden = {}
    for i, (name, rows) in enumerate(cases.items()):
        for k, v in make_case(small, SMALL_IDS, 1000, rows, seed=10 + i, logits_keep=None).items():
            golden[f"{name}.{k}"] = v
    save_file(golden, os.path.join(OUT, "golden_tiny7b.safetensors"))

    tied = build(config_dict(vocab=151936, hidden=16, inter=32, layers=2, heads=2, kv=1, mrope=[2, 1, 1],
                             v_hidden=32, v_inter=64, v_depth=2, v_heads=4, fullatt=[1], tie=True, ids=REAL_IDS),
                 seed=2)
    write_checkpoint(tied, os.path.join(OUT, "tiny3b"), "published", 1)
    golden = {}
    for k, v in make_case(tied, REAL_IDS, 151643, [[ims["rgb"]], [ims["rgba"]]], seed=20, logits_keep=2).items():
        golden[f"batch.{k}"] = v
    save_file(golden, os.path.join(OUT, "golden_tiny3b.safetensors"))

    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"fixtures written to {OUT}: {total / 1e6:.2f} MB")
    assert total < 20e6, "committed fixtures must stay under 20 MB"


if __name__ == "__main__":
    main()
