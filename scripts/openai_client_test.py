#!/usr/bin/env python3
"""Drive `spatialthinker serve` with the official `openai` client.

Checks: a plain request, an image request, a streamed request (same text as the plain one), n=2,
16 concurrent requests (each gets the greedy output it gets alone), and clean 4xx answers for a
malformed body, an oversized image and a bad API key, with the server still up afterwards; then
SIGTERM must stop the server cleanly. With --load, also measures 64 concurrent clients against a
batched and a one-at-a-time server.

Without --model the server runs its hidden deterministic fake engine (no checkpoint needed):
    .venv/bin/python scripts/openai_client_test.py --binary target/debug/spatialthinker
With a tiny checkpoint:
    .venv/bin/python scripts/openai_client_test.py --model /path/to/ckpt
"""

import argparse
import asyncio
import base64
import io
import json
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
from PIL import Image

API_KEY = "client-test-key"
MAX_IMAGE_PIXELS = 1_000_000


def start_server(args, max_batch):
    cmd = [args.binary, "serve", "--host", "127.0.0.1", "--port", "0", "--api-key", API_KEY,
           "--max-batch", str(max_batch), "--max-queue", "512",
           "--max-image-pixels", str(MAX_IMAGE_PIXELS), "--max-tokens", str(args.max_tokens)]
    if args.model:
        cmd += ["--model", args.model]
    else:
        cmd += ["--fake-engine", "--fake-step-ms", str(args.fake_step_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        sys.exit(f"server did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


def png_data_url(width, height):
    img = Image.new("RGB", (width, height))
    for x in range(0, width, max(1, width // 8)):
        for y in range(height):
            img.putpixel((x, y), (255, x % 256, y % 256))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def raw_post(base, path, body, key=API_KEY):
    req = urllib.request.Request(base + path, data=body, method="POST",
                                 headers={"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def health(base):
    with urllib.request.urlopen(base + "/health", timeout=10) as r:
        return r.status, json.loads(r.read())


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok   {what}")


async def functional(base, model_name, max_tokens):
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0)
    models = await client.models.list()
    check(models.data[0].id == model_name, f"GET /v1/models lists {model_name}")

    async def ask(text, **kw):
        r = await client.chat.completions.create(
            model=model_name, temperature=0, max_tokens=max_tokens,
            messages=[{"role": "user", "content": text}], **kw)
        return r

    plain = await ask("Where is the man with respect to the bike?")
    text = plain.choices[0].message.content
    check(plain.choices[0].finish_reason in ("stop", "length") and text, "plain request answered")

    img = await client.chat.completions.create(
        model=model_name, temperature=0, max_tokens=max_tokens,
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png_data_url(64, 48)}},
            {"type": "text", "text": "What is in the picture?"}]}])
    check(bool(img.choices[0].message.content), "image request answered")

    stream = await client.chat.completions.create(
        model=model_name, temperature=0, max_tokens=max_tokens, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Where is the man with respect to the bike?"}])
    parts, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    check("".join(parts) == text, "streamed text equals the non-streamed greedy text")
    check(usage is not None and usage.completion_tokens == plain.usage.completion_tokens,
          "streamed usage chunk")

    two = await client.chat.completions.create(
        model=model_name, temperature=0.8, seed=11, n=2, max_tokens=max_tokens,
        messages=[{"role": "user", "content": "Name a colour."}])
    check(len(two.choices) == 2 and [c.index for c in two.choices] == [0, 1], "n=2 gives two choices")

    prompts = [f"Question {i}: is the cup left of the box?" for i in range(16)]
    alone = [(await ask(p)).choices[0].message.content for p in prompts]
    together = await asyncio.gather(*(ask(p) for p in prompts))
    check([r.choices[0].message.content for r in together] == alone,
          "16 concurrent requests each get their one-at-a-time greedy output")

    bad = openai.AsyncOpenAI(base_url=base + "/v1", api_key="wrong-key", max_retries=0)
    try:
        await bad.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "x"}])
        check(False, "bad API key rejected")
    except openai.AuthenticationError as e:
        check(e.status_code == 401 and e.body and "message" in e.body, "bad API key -> 401 with an error body")

    side = int(MAX_IMAGE_PIXELS ** 0.5) + 10
    try:
        await client.chat.completions.create(
            model=model_name, max_tokens=4,
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": png_data_url(side, side)}}]}])
        check(False, "oversized image rejected")
    except openai.APIStatusError as e:
        check(e.status_code == 413, f"oversized image ({side}x{side}) -> 413")

    status, body = raw_post(base, "/v1/chat/completions", b'{"messages": [ {"role": ')
    check(status == 400 and "message" in body["error"], "malformed body -> 400 in OpenAI error shape")
    status, body = raw_post(base, "/v1/chat/completions", b'{"messages": [], "model": null}')
    check(status == 400 and body["error"]["param"] == "messages", "empty messages -> 400 naming the field")
    status, body = health(base)
    check(status == 200 and body["status"] == "ok", "server still up after the bad requests")
    await client.close()
    await bad.close()


async def load(base, model_name, clients, requests_per_client, max_tokens):
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0,
                                timeout=600)
    latencies = []

    async def one_client(c):
        for r in range(requests_per_client):
            t = time.perf_counter()
            await client.chat.completions.create(
                model=model_name, temperature=0, max_tokens=max_tokens,
                messages=[{"role": "user", "content": f"client {c} request {r}: where is the cup?"}])
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(one_client(c) for c in range(clients)))
    wall = time.perf_counter() - start
    await client.close()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return len(latencies) / wall, statistics.median(latencies), p99


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/debug/spatialthinker")
    ap.add_argument("--model", help="checkpoint folder; without it the fake engine is served")
    ap.add_argument("--fake-step-ms", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--load", action="store_true", help="also run the 64-client load comparison")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests-per-client", type=int, default=2)
    args = ap.parse_args()

    proc, base = start_server(args, max_batch=16)
    model_name = json.loads(urllib.request.urlopen(base + "/health").read())["model"]
    try:
        asyncio.run(functional(base, model_name, args.max_tokens))
    finally:
        code, out = stop_server(proc)
    check(code == 0 and "server stopped" in out, "SIGTERM stops the server cleanly")

    if args.load:
        for batch in (16, 1):
            proc, base = start_server(args, max_batch=batch)
            try:
                rps, p50, p99 = asyncio.run(load(base, model_name, args.clients,
                                                 args.requests_per_client, args.max_tokens))
            finally:
                stop_server(proc)
            mode = "batched (max 16)" if batch > 1 else "one at a time"
            print(f"load {args.clients} clients, {mode:>16}: {rps:7.2f} req/s, "
                  f"p50 {p50 * 1000:8.1f} ms, p99 {p99 * 1000:8.1f} ms")
    print("all checks passed")


if __name__ == "__main__":
    main()
