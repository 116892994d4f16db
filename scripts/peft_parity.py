#!/usr/bin/env python3
"""Cross-check LoRA adapters between `spatialthinker` and Hugging Face PEFT (tests/lora.rs).

Usage:
  peft_parity.py load BASE_DIR ADAPTER_DIR INPUTS.safetensors OUT.safetensors
      Loads BASE_DIR with transformers, puts the adapter folder on it with
      `PeftModel.from_pretrained`, checks that PEFT built exactly the adapted layers the file
      holds (no adapter left at its initial value, none unused), and writes the logits of INPUTS.
  peft_parity.py write BASE_DIR ADAPTER_DIR INPUTS.safetensors OUT.safetensors SEED
      Makes a LoRA (r = 4, alpha = 8, the decoder's seven linear layers) with PEFT, gives A and B
      random non-zero values from SEED, saves it with `save_pretrained` into ADAPTER_DIR and
      writes its logits of INPUTS.

INPUTS holds `input_ids` [1, L] int64, `pixel_values` [N, 1176] f32 and `image_grid_thw` [1, 3]
int64; OUT receives `logits` [1, L, V] f32 (eager attention, f32). Run with the project's venv
(scripts/requirements-python.txt pins torch, transformers and peft).
"""

import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import Qwen2_5_VLForConditionalGeneration


def base(path):
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, torch_dtype=torch.float32, attn_implementation="eager"
    ).eval()


def logits(model, inputs_path, out_path):
    inputs = load_file(inputs_path)
    ids = inputs["input_ids"]
    # transformers 5 builds M-RoPE positions only when told which tokens are image tokens
    image_token_id = model.get_base_model().config.image_token_id
    with torch.no_grad():
        out = model(
            input_ids=ids,
            mm_token_type_ids=(ids == image_token_id).int(),
            attention_mask=torch.ones_like(ids),
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
        )
    save_file({"logits": out.logits.float().contiguous()}, out_path)
    print(f"logits {tuple(out.logits.shape)}")


def load(base_dir, adapter_dir, inputs_path, out_path):
    model = PeftModel.from_pretrained(base(base_dir), adapter_dir).eval()
    saved = load_file(f"{adapter_dir}/adapter_model.safetensors")
    built = get_peft_model_state_dict(model)
    if set(saved) != set(built):
        sys.exit(
            f"PEFT built other adapters than the file holds: only in file {sorted(set(saved) - set(built))[:5]}, "
            f"only built {sorted(set(built) - set(saved))[:5]}"
        )
    for key, tensor in saved.items():
        if not torch.equal(built[key].float(), tensor.float()):
            sys.exit(f"{key}: PEFT holds other values than the file")
    print(f"adapters: {len(saved)} tensors, all loaded")
    logits(model, inputs_path, out_path)


def write(base_dir, adapter_dir, inputs_path, out_path, seed):
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        exclude_modules=r"model\.visual\..*",
    )
    model = get_peft_model(base(base_dir), config)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    model.eval()
    model.save_pretrained(adapter_dir)
    logits(model, inputs_path, out_path)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"load": load, "write": write}[command](*args)
