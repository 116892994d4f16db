#!/usr/bin/env python3
"""Load a checkpoint written by `spatialthinker train` with Hugging Face transformers and print
the logits of one input, so a test can compare them with the Rust model's.

Usage: check_checkpoint_logits.py CHECKPOINT_DIR INPUTS.safetensors OUT.safetensors

INPUTS holds `input_ids` [1, L] int64, `pixel_values` [N, 1176] f32 and `image_grid_thw` [1, 3]
int64. OUT receives `logits` [1, L, V] f32 from `Qwen2_5_VLForConditionalGeneration`
(eager attention, f32). Run with the project's venv (scripts/requirements-python.txt).
"""

import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2_5_VLForConditionalGeneration


def main() -> None:
    ckpt, inputs_path, out_path = sys.argv[1:4]
    inputs = load_file(inputs_path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        ckpt, torch_dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = inputs["input_ids"]
    # transformers 5 builds M-RoPE positions only when told which tokens are image tokens
    mm_token_type_ids = (ids == model.config.image_token_id).int()
    with torch.no_grad():
        out = model(
            input_ids=ids,
            mm_token_type_ids=mm_token_type_ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
        )
    save_file({"logits": out.logits.float().contiguous()}, out_path)
    print(f"logits {tuple(out.logits.shape)}")


if __name__ == "__main__":
    main()
