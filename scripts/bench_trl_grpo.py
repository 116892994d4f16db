#!/usr/bin/env python3
"""Time TRL's GRPOTrainer on the same tiny Qwen2.5-VL checkpoint and data as
`spatialthinker bench train`, for the per-step comparison.

Usage:
    .venv/bin/python scripts/bench_trl_grpo.py MODEL_DIR DATASET_DIR [--prompts 2] [--group-size 8]
        [--response-length 64] [--steps 3] [--warmup 1]

MODEL_DIR is a checkpoint written by this project (e.g. runs/tiny-cpu/base-model); it is copied to
a scratch folder with a Qwen2-VL chat template added (TRL renders prompts through the processor).
DATASET_DIR is an STVQA-schema dataset (e.g. runs/tiny-cpu/synthetic-data); its first prompts are
used, as `[image, problem text]` user turns. EasyR1 settings are mapped as far as TRL allows: n
responses per prompt, temperature 1, beta 0.01 (KL in the loss), clip 0.2 / 0.3, lr 1e-6, grad
clip 1.0, one optimiser step per RL step, every response forced to exactly --response-length
tokens (min_new_tokens). The reward is a cheap format check (the reward's cost is negligible in
both trainers). Prints one JSON line with the mean seconds per timed step. Needs `trl` (pinned in
scripts/requirements-bench.txt), which the core test suite does not install.
"""

import argparse
import io
import json
import os
import re
import shutil
import tempfile
import time

import pyarrow.parquet as pq
import torch
from datasets import Dataset
from PIL import Image
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
import trl.trainer.utils as trl_utils

# TRL's fused LM head scores only the completion positions on Triton devices and every position
# elsewhere (to keep tile shapes fixed for compilers that recompile on a new shape). On the CPU
# that projects the whole prompt through the 152k-row head for nothing; score only the labelled
# positions there too, as on a GPU, so the comparison is against TRL's best CPU step.
_trl_use_triton = trl_utils._use_triton
trl_utils._use_triton = lambda device: device.type == "cpu" or _trl_use_triton(device)

# Qwen2-VL's chat template, reduced to what these prompts use (default system prompt, image and
# text parts), rendering the same text as the project's processor.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def format_reward(completions, **kwargs):
    out = []
    for c in completions:
        text = c[0]["content"] if isinstance(c, list) else c
        ok = all(re.search(f"<{t}>.*?</{t}>", text, re.S) for t in ("observe", "scene", "think", "answer"))
        out.append(0.1 if ok else 0.0)
    return out


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times = []
        self.start = None

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--response-length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(0)

    scratch = tempfile.mkdtemp()
    model_dir = os.path.join(scratch, "model")
    shutil.copytree(args.model, model_dir)
    with open(os.path.join(model_dir, "chat_template.jinja"), "w") as f:
        f.write(CHAT_TEMPLATE)

    files = sorted(os.listdir(os.path.join(args.data, "data")))
    train = [f for f in files if f.startswith("train")][0]
    rows = pq.read_table(os.path.join(args.data, "data", train)).slice(0, args.prompts).to_pylist()
    records = []
    for r in rows:
        img = Image.open(io.BytesIO(r["images"]["bytes"])).convert("RGB")
        text = r["problem"].replace("<image>", "")
        records.append({"prompt": [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": text}]}], "image": img})
    dataset = Dataset.from_list(records)

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(model_dir)
    n = args.group_size
    cfg = GRPOConfig(
        output_dir=os.path.join(scratch, "out"),
        per_device_train_batch_size=args.prompts * n,
        gradient_accumulation_steps=1,
        num_generations=n,
        max_completion_length=args.response_length,
        generation_kwargs={"min_new_tokens": args.response_length},
        temperature=1.0,
        top_p=1.0,
        beta=0.01,
        epsilon=0.2,
        epsilon_high=0.3,
        loss_type="dapo",
        learning_rate=1e-6,
        max_grad_norm=1.0,
        num_iterations=1,
        max_steps=args.warmup + args.steps,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        shuffle_dataset=False,
        seed=0,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=format_reward, args=cfg, train_dataset=dataset,
                          processing_class=processor, callbacks=[timer])
    trainer.train()
    timed = timer.times[args.warmup:]
    print(json.dumps({
        "trainer": "trl", "trl_version": __import__("trl").__version__,
        "threads": torch.get_num_threads(), "prompts": args.prompts, "group_size": n,
        "response_length": args.response_length, "timed_steps": len(timed),
        "step_s": sum(timed) / max(1, len(timed)), "all_steps_s": timer.times,
    }))
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
