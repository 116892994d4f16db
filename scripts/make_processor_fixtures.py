#!/usr/bin/env python3
"""Golden outputs of the Qwen2.5-VL processor for `tests/processor.rs`.

Runs the reference implementations the Rust processor must match:
  * Pillow 13.0.0 `Image.resize(..., BICUBIC)` on 8-bit RGB (SHA-256 of the output bytes for
    many size pairs: up, down, mixed, 1-px, odd ratios);
  * EasyR1's training-time pre-resize (area limits, int truncation, PIL's default filter);
  * transformers 5.23 `Qwen2_5_VLProcessor` with the PIL image processor
    (`Qwen2VLImageProcessorPil`, built from the published Qwen2.5-VL preprocessor values; no hub
    access) and the embedded tokenizer: pixel_values, image_grid_thw, input_ids.

Versions are pinned in scripts/requirements-python.txt. Run from the repository root:
    .venv/bin/python scripts/make_processor_fixtures.py
Writes tests/fixtures/processor/{images/*.png, resize.json, easyr1.json, prompts.json,
pixel_values.safetensors}.
"""

import gzip
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import PIL
import tokenizers
import torch
import transformers
from PIL import Image
from safetensors.numpy import save_file
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

assert PIL.__version__ == "13.0.0", PIL.__version__
assert transformers.__version__ == "5.23.0", transformers.__version__

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "processor"
IMAGES = OUT / "images"

# Published Qwen2.5-VL-3B/7B preprocessor_config.json values.
QWEN25VL_PREPROCESSOR = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "rescale_factor": 0.00392156862745098,
    "resample": 3,
    "do_convert_rgb": True,
}

# The Qwen2-VL / Qwen2.5-VL chat template (behaviour of the published chat_template.json,
# docs/recipe.md, "Training prompt"), as the reference Jinja the processor renders.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern(h: int, w: int, seed: int) -> np.ndarray:
    """Deterministic RGB test pattern: gradients, a hard edge and noise (uint8, H x W x 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1)).astype(np.int32)
    g = (y * 255 // max(h - 1, 1)).astype(np.int32)
    b = np.where((x // 5 + y // 7) % 2 == 0, 230, 20)
    img = np.stack([r, g, b], axis=-1) + rng.integers(-40, 41, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_images() -> dict:
    """Writes the test images; returns name -> PIL image as re-read from disk."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    rgb = pattern(61, 45, 1)
    alpha = (np.add.outer(np.arange(70) * 3, np.arange(50) * 2) % 256).astype(np.uint8)
    alpha[:5, :5] = 0
    alpha[-5:, -5:] = 255
    made = {
        # Not a 28-multiple: 61 x 45 (h x w) -> 56 x 56.
        "rgb_odd.png": Image.fromarray(rgb),
        # Already 28-multiples inside the pixel budget: identity resize.
        "rgb_56x56.png": Image.fromarray(pattern(56, 56, 2)),
        # Greyscale.
        "gray_l.png": Image.fromarray(pattern(50, 61, 3)[..., 0]),
        # Palette without transparency.
        "palette_p.png": Image.fromarray(pattern(45, 59, 4)).quantize(colors=37),
        # RGBA with alpha 0..255; 70 / 28 = 2.5 rounds to even.
        "rgba.png": Image.fromarray(np.dstack([pattern(70, 50, 5), alpha])),
        # Grey + alpha.
        "gray_la.png": Image.fromarray(
            np.dstack([pattern(52, 47, 6)[..., 1], alpha[:52, :47]]), mode="LA"
        ),
        # Tiny: 20 x 90 (h x w) is scaled up to 28 x 140.
        "tiny_20x90.png": Image.fromarray(pattern(20, 90, 7)),
    }
    pal = Image.fromarray(pattern(50, 58, 8)).quantize(colors=16)
    pal.info["transparency"] = 3
    made["palette_trns.png"] = pal
    # Source of the downscale case (processor with a small max_pixels).
    made["rgb_160x120.png"] = Image.fromarray(pattern(120, 160, 9))
    out = {}
    for name, img in made.items():
        path = IMAGES / name
        if name == "palette_trns.png":
            img.save(path, transparency=3)
        else:
            img.save(path)
        out[name] = Image.open(path)
        out[name].load()
    return out


def resize_cases() -> dict:
    """Pillow BICUBIC on 8-bit RGB: SHA-256 of the output for many size pairs."""
    sources = {
        "src_97x61.png": pattern(61, 97, 11),
        "src_13x211.png": pattern(211, 13, 12),
        "src_1x40.png": pattern(40, 1, 13),
        "src_300x7.png": pattern(7, 300, 14),
    }
    targets = [
        (1, 1), (1, 40), (40, 1), (2, 3), (5, 5), (13, 211), (14, 14), (28, 28), (28, 56),
        (30, 20), (48, 30), (49, 31), (56, 28), (60, 97), (61, 97), (96, 60), (97, 60),
        (97, 62), (98, 61), (100, 100), (120, 33), (150, 250), (194, 122), (200, 61), (31, 200),
        (7, 400), (333, 17), (25, 60), (60, 25), (70, 50), (97, 30), (40, 61), (12, 180),
        (290, 8), (280, 14), (3, 64), (512, 3), (45, 45), (99, 99), (1, 211), (13, 1),
    ]
    cases = []
    for name, arr in sources.items():
        Image.fromarray(arr).save(IMAGES / name)
        img = Image.open(IMAGES / name).convert("RGB")
        for w, h in targets:
            out = img.resize((w, h), Image.Resampling.BICUBIC)
            cases.append({"source": name, "width": w, "height": h, "sha256": sha256(out.tobytes())})
    return {"pillow": PIL.__version__, "cases": cases}


def easyr1_resize(img: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """EasyR1 `process_image`: area limits with int truncation, default filter, then RGB."""
    if img.width * img.height > max_pixels:
        f = math.sqrt(max_pixels / (img.width * img.height))
        img = img.resize((int(img.width * f), int(img.height * f)))
    if img.width * img.height < min_pixels:
        f = math.sqrt(min_pixels / (img.width * img.height))
        img = img.resize((int(img.width * f), int(img.height * f)))
    return img if img.mode == "RGB" else img.convert("RGB")


def easyr1_cases(images: dict) -> dict:
    cases = []
    for name, lo, hi in [
        ("rgb_160x120.png", 262144, 4194304),  # up to ~512^2 (the training setting)
        ("rgb_160x120.png", 1000, 5000),  # down
        ("rgb_odd.png", 262144, 4194304),
        ("gray_l.png", 10000, 4194304),  # greyscale up
        ("tiny_20x90.png", 1000, 1500),
    ]:
        out = easyr1_resize(images[name], lo, hi)
        cases.append({
            "image": name, "min_pixels": lo, "max_pixels": hi,
            "width": out.width, "height": out.height, "sha256": sha256(out.tobytes()),
        })
    return {"cases": cases}


def tokenizer() -> PreTrainedTokenizerFast:
    raw = gzip.decompress((ROOT / "trainer/assets/qwen2_5_vl_tokenizer.json.gz").read_bytes())
    tok = tokenizers.Tokenizer.from_str(raw.decode("utf-8"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )


def first_frame(pixel_values: np.ndarray) -> np.ndarray:
    """Keeps temporal slice 0 of every row (the other is an exact copy; checked here)."""
    rows = pixel_values.reshape(pixel_values.shape[0], 3, 2, 14 * 14)
    assert np.array_equal(rows[:, :, 0], rows[:, :, 1])
    return np.ascontiguousarray(rows[:, :, 0].reshape(pixel_values.shape[0], 3 * 14 * 14))


def main() -> None:
    torch.set_num_threads(1)
    images = make_images()
    tensors = {}
    (OUT / "resize.json").write_text(json.dumps(resize_cases(), indent=1) + "\n")
    (OUT / "easyr1.json").write_text(json.dumps(easyr1_cases(images), indent=1) + "\n")

    default = Qwen2VLImageProcessorPil(**QWEN25VL_PREPROCESSOR)
    small = Qwen2VLImageProcessorPil(**{**QWEN25VL_PREPROCESSOR, "max_pixels": 28 * 28 * 6})
    per_image = []
    for name in sorted(images):
        if name.startswith("src_"):
            continue
        # The 160 x 120 image is processed with max_pixels 4704 only (both sides shrink).
        runs = [("max4704", small)] if name == "rgb_160x120.png" else [("default", default)]
        for label, proc in runs:
            out = proc(images=[images[name]], return_tensors="np")
            key = f"{label}/{name}"
            tensors[key] = first_frame(out["pixel_values"].astype(np.float32))
            per_image.append({
                "image": name, "processor": label, "tensor": key,
                "mode": images[name].mode,
                "image_grid_thw": out["image_grid_thw"].tolist(),
            })

    # The processor's class check looks up the video-processor registry, which needs
    # torchvision; only images are processed here, so skip that check.
    Qwen2_5_VLProcessor.check_argument_for_proper_class = lambda self, name, arg: None
    processor = Qwen2_5_VLProcessor(
        image_processor=default, tokenizer=tokenizer(), chat_template=CHAT_TEMPLATE
    )
    prompt_cases = [
        ("training_like", [{"role": "user", "content": [
            {"type": "image"},
            {"type": "text", "text": " You are a vision-language assistant. Where is the cup?"}]}],
         ["rgb_odd.png"]),
        ("two_images", [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": "Compare this "},
            {"type": "image"}, {"type": "text", "text": "with that.\n(640 x 480)"}]}],
         ["tiny_20x90.png", "rgba.png"]),
        ("system_multiturn", [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "Hi there"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello! <think>ok</think>"}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Und jetzt? 你好"}]}],
         ["gray_l.png"]),
        ("text_only", [{"role": "user", "content": [{"type": "text", "text": "Count to 3."}]}], []),
    ]
    prompts = []
    for name, messages, image_names in prompt_cases:
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        imgs = [images[n] for n in image_names]
        out = processor(
            images=imgs or None, text=[text], add_special_tokens=False, return_tensors="np"
        )
        entry = {
            "name": name, "messages": messages, "images": image_names, "text": text,
            "input_ids": out["input_ids"][0].tolist(),
        }
        if imgs:
            entry["image_grid_thw"] = out["image_grid_thw"].tolist()
            # A batch is the per-image rows concatenated: checked here, so the test compares
            # against the per-image tensors.
            concat = np.concatenate([tensors[f"default/{n}"] for n in image_names])
            assert np.array_equal(first_frame(out["pixel_values"].astype(np.float32)), concat)
        prompts.append(entry)

    (OUT / "prompts.json").write_text(
        json.dumps({"per_image": per_image, "prompts": prompts}, indent=1, ensure_ascii=False)
        + "\n"
    )
    save_file(tensors, str(OUT / "pixel_values.safetensors"))
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
