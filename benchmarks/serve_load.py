"""Load on `nanogpt serve`: concurrent clients against the batched server and against one-at-a-time (--max_batch=1).

    python benchmarks/serve_load.py [--out_dir=RUN] [--clients=16] [--tokens=128] [--runs=3] [--max_batch=16]
                                    [--threads=0] [--skip=load|soak]

Without --out_dir, a model of GPT-2 124M's shape (12 layers, 12 heads, 768 wide, block 1024, GPT-2 BPE) with random
weights is saved to a temporary run. Every measurement starts a fresh server process on 127.0.0.1 (a free port),
drives it, then stops it with SIGTERM (and checks it exits 0).

load: `clients` clients each send one streamed request for `tokens` tokens (temperature 1, each its own seed) at
      once. Printed per run and as medians: aggregate generated tokens/s (usage's completion_tokens over the wall
      time from first request to last answer), time to first token p50/p95, request latency p50/p95, errors.
      Batched and --max_batch=1 runs alternate; the ratio is the medians'.
soak: 500 requests, 32 at a time, against a batched server (16 in the batch, 64 in the queue), each for 1..32
      tokens; a tenth are cancelled mid-stream, one in 25 asks for more tokens than allowed (400), and a client told
      429 waits Retry-After. Checks that every completed request is whole (usage and finish_reason agree with what
      was streamed), every refused one got 429 or 400, and the server's memory (RSS) at the end is within 10% of
      what it was after the first 50.

Every request and run is bounded in time; only loopback addresses are used.
"""

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_results  # noqa: E402
PROMPTS = ["The meaning of life is", "Once upon a time, in a land far away,", "def fibonacci(n):",
           "The weather today", "In 1969, the first", "Dear diary, today I", "The best way to learn is",
           "Breaking news:"]
REQUEST_TIMEOUT_S = 600
SOAK_REQUESTS, SOAK_CONCURRENCY, SOAK_CANCEL_EVERY = 500, 32, 10


def make_random_run(out_dir):
    """A random-weight GPT-2-124M-shaped run (GPT-2 BPE), saved as nanogpt saves checkpoints."""
    import torch

    from nanogpt import checkpoint
    from nanogpt.model import GPT, GPTConfig

    args = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, bias=True, vocab_size=50304, dropout=0.0)
    torch.manual_seed(0)
    state = {"model": GPT(GPTConfig(**args)).state_dict(), "model_args": args, "iter_num": 0,
             "best_val_loss": 9.9, "config": {}, "tokenizer": {"tokenizer": "gpt2", "vocab_size": 50257}}
    checkpoint.save_checkpoint(out_dir, state, {"optimizer": {}, "iter_num": 0}, is_best=False)


class Server:
    """`nanogpt serve` in a child process on a free loopback port."""

    def __init__(self, out_dir, threads, *settings):
        env = dict(os.environ, PYTHONPATH=str(REPO))
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nanogpt.cli", "serve", f"--out_dir={out_dir}", "--host=127.0.0.1", "--port=0",
             "--device=cpu", "--dtype=float32", *settings],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("serving "):
            self.proc.kill()
            raise SystemExit(f"the server did not start: {line!r}")
        self.url = line.split(" on ")[-1].strip()

    def rss_mb(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = "killed after 120 s"
        if status != 0:
            print(f"  ! server exit status {status} after SIGTERM (expected 0)")
        return status


async def completion(session, url, body, cancel_after=None):
    """One streamed completion. Returns a dict: status, text, finish_reason, usage, ttft and latency (s), and
    whether it was cancelled by us after `cancel_after` chunks."""
    import aiohttp

    start = time.perf_counter()
    result = {"status": None, "text": "", "finish": None, "usage": None, "ttft": None, "cancelled": False,
              "done": False, "error": None}
    body = dict(body, stream=True, stream_options={"include_usage": True})
    try:
        async with session.post(url + "/v1/completions", json=body,
                                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as response:
            result["status"] = response.status
            if response.status != 200:
                result["error"] = (await response.json())["error"]["message"]
                result["retry_after"] = response.headers.get("Retry-After")
                return result
            chunks = 0
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    result["done"] = True
                    break
                event = json.loads(data)
                if "error" in event:
                    result["error"] = event["error"]["message"]
                    continue
                if event.get("usage"):
                    result["usage"] = event["usage"]
                for choice in event["choices"]:
                    if result["ttft"] is None:
                        result["ttft"] = time.perf_counter() - start
                    result["text"] += choice["text"]
                    result["finish"] = choice["finish_reason"] or result["finish"]
                chunks += 1
                if cancel_after is not None and chunks >= cancel_after:
                    result["cancelled"] = True
                    response.close()  # drop the connection mid-stream
                    return result
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        result["error"] = repr(e)
    finally:
        result["latency"] = time.perf_counter() - start
    return result


def percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def peak_rss(server, done, every=0.1):
    """The server's largest resident memory (MB) seen until `done` is set."""
    peak = server.rss_mb()
    while not done.is_set():
        peak = max(peak, server.rss_mb())
        await asyncio.sleep(every)
    return peak


async def load_run(server, clients, tokens, seed, settle_s=1.0):
    import aiohttp

    rng = random.Random(seed)
    bodies = [{"prompt": rng.choice(PROMPTS), "max_tokens": tokens, "temperature": 1.0, "seed": rng.randrange(2**31)}
              for _ in range(clients)]
    done = asyncio.Event()
    watcher = asyncio.create_task(peak_rss(server, done))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        start = time.perf_counter()
        results = await asyncio.gather(*(completion(session, server.url, body) for body in bodies))
        wall = time.perf_counter() - start
    done.set()
    rss_under_load = await watcher
    await asyncio.sleep(settle_s)  # the clients have left; the server is idle
    rss_after = server.rss_mb()
    ok = [r for r in results if r["status"] == 200 and r["done"] and r["usage"] and not r["error"]]
    generated = sum(r["usage"]["completion_tokens"] for r in ok)
    ttft, latency = [r["ttft"] for r in ok], [r["latency"] for r in ok]
    return {"tokens_per_s": generated / wall, "ttft_p50": percentile(ttft, 50), "ttft_p95": percentile(ttft, 95),
            "latency_p50": percentile(latency, 50), "latency_p95": percentile(latency, 95),
            "errors": len(results) - len(ok),
            "tokens": generated, "wall_s": wall, "rss_under_load_mb": rss_under_load, "rss_after_mb": rss_after}


def show(label, m):
    print(f"  {label:<22} {m['tokens_per_s']:7.1f} tok/s  TTFT p50 {m['ttft_p50']:6.2f} s  p95 {m['ttft_p95']:6.2f} s"
          f"  latency p50 {m['latency_p50']:6.1f} s  p95 {m['latency_p95']:6.1f} s  errors {m['errors']}"
          f"  ({m['tokens']} tokens in {m['wall_s']:.1f} s)  RSS under load {m['rss_under_load_mb']:.0f} MB, "
          f"after the clients left {m['rss_after_mb']:.0f} MB", flush=True)


def bench_load(out_dir, args):
    print(f"load: {args.clients} concurrent clients x {args.tokens} tokens, batched (--max_batch={args.max_batch}) "
          f"against --max_batch=1, {args.runs} alternating runs, OMP_NUM_THREADS={args.threads or 'unset (the server picks)'}")
    runs = {"batched": [], "one at a time": []}
    for i in range(args.runs):
        for label, batch in (("batched", args.max_batch), ("one at a time", 1)):
            server = Server(out_dir, args.threads, f"--max_batch={batch}", f"--max_queue={args.clients}")
            try:
                asyncio.run(completion_warmup(server.url))
                measured = asyncio.run(load_run(server, args.clients, args.tokens, seed=i))
            finally:
                server.stop()
            runs[label].append(measured)
            show(f"run {i + 1}, {label}", measured)
    medians = {label: {key: statistics.median(m[key] for m in ms) for key in ms[0]} for label, ms in runs.items()}
    print("medians:")
    for label, m in medians.items():
        show(label, m)
    ratio = medians["batched"]["tokens_per_s"] / medians["one at a time"]["tokens_per_s"]
    print(f"batched / one at a time: {ratio:.2f}x aggregate tokens/s; batched TTFT p95 "
          f"{medians['batched']['ttft_p95']:.2f} s", flush=True)
    return {"clients": args.clients, "tokens": args.tokens, "max_batch": args.max_batch, "runs": args.runs,
            "batched_over_one_at_a_time": ratio, **{f"{label.replace(' ', '_')}_{key}": value
                                                    for label, m in medians.items() for key, value in m.items()}}


async def completion_warmup(url):
    """One short request, so the first measured one does not pay for lazy initialisation."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        await completion(session, url, {"prompt": "Hello", "max_tokens": 2})


async def soak_requests(server, rss):
    import aiohttp

    rng = random.Random(1)
    semaphore = asyncio.Semaphore(SOAK_CONCURRENCY)
    results = []

    async def one(i, session):
        body = {"prompt": rng.choice(PROMPTS), "max_tokens": rng.randint(1, 32), "temperature": 1.0, "seed": i}
        if i % 25 == 7:
            body["max_tokens"] = 10**6  # a request the server must refuse (400)
        cancel_after = 2 if i % SOAK_CANCEL_EVERY == 3 else None
        async with semaphore:
            result = await completion(session, server.url, body, cancel_after)
        result["asked"] = body["max_tokens"]
        results.append(result)
        if len(results) == 50:
            rss["after 50"] = server.rss_mb()
        if result["status"] == 429:  # a polite client waits as told before its next request
            await asyncio.sleep(float(result.get("retry_after") or 1))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=SOAK_CONCURRENCY)) as session:
        await asyncio.gather(*(one(i, session) for i in range(SOAK_REQUESTS)))
    return results


def whole(r):
    """A completed request is whole: it ended with [DONE], a finish_reason, and usage that matches its length."""
    if not (r["done"] and r["finish"] in ("stop", "length") and r["usage"] and not r["error"]):
        return False
    generated = r["usage"]["completion_tokens"]
    return generated == r["asked"] if r["finish"] == "length" else 1 <= generated <= r["asked"]


def bench_soak(out_dir, args):
    print(f"soak: {SOAK_REQUESTS} requests, {SOAK_CONCURRENCY} at a time, every {SOAK_CANCEL_EVERY}th cancelled "
          "mid-stream, every 25th asking too many tokens; server --max_batch=16 --max_queue=64", flush=True)
    server = Server(out_dir, args.threads, "--max_batch=16", "--max_queue=64", "--max_n=1")
    rss = {}
    try:
        start = time.perf_counter()
        results = asyncio.run(soak_requests(server, rss))
        wall = time.perf_counter() - start
        rss["end"] = server.rss_mb()
    finally:
        status = server.stop()
    cancelled = [r for r in results if r["cancelled"]]
    refused = [r for r in results if r["status"] not in (None, 200)]
    completed = [r for r in results if r["status"] == 200 and not r["cancelled"]]
    broken = [r for r in completed if not whole(r)]
    bad_refusals = [r for r in refused if r["status"] not in (400, 429)]
    lost = [r for r in results if r["status"] is None]
    growth = rss["end"] / rss["after 50"] - 1
    print(f"  {len(results)} requests in {wall:.0f} s: {len(completed)} completed ({len(broken)} not whole), "
          f"{len(cancelled)} cancelled by the client, {len(refused)} refused "
          f"({sum(r['status'] == 429 for r in refused)} x 429, {sum(r['status'] == 400 for r in refused)} x 400, "
          f"{len(bad_refusals)} other), {len(lost)} without an answer")
    print(f"  server RSS after 50 requests {rss['after 50']:.0f} MB, at the end {rss['end']:.0f} MB "
          f"({growth:+.1%}); exit status after SIGTERM {status}")
    passed = not broken and not bad_refusals and not lost and abs(growth) <= 0.10 and status == 0
    print(f"  soak {'PASSED' if passed else 'FAILED'}", flush=True)
    return {"soak_passed": passed, "soak_rss_after_50_mb": rss["after 50"], "soak_rss_end_mb": rss["end"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", help="a trained run to serve (default: random weights of GPT-2 124M's shape)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max_batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0,
                        help="OMP_NUM_THREADS of the server (0: unset, the server's own choice: its idle cores)")
    parser.add_argument("--skip", choices=["load", "soak"])
    parser.add_argument("--notes", default="", help="free text saved with the figures (e.g. 'machine shared')")
    args = parser.parse_args()
    if not 1 <= args.clients <= 256 or not 1 <= args.tokens <= 1024 or not 1 <= args.runs <= 20:
        raise SystemExit("keep to 1..256 clients, 1..1024 tokens and 1..20 runs")
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        out_dir = args.out_dir
        if out_dir is None:
            out_dir = tmp
            print("saving a random-weight GPT-2-124M-shaped run ...", flush=True)
            make_random_run(out_dir)
        figures = {}
        if args.skip != "load":
            figures.update(bench_load(out_dir, args))
        if args.skip != "soak":
            figures.update(bench_soak(out_dir, args))
        write_results("serve_load", figures, notes=args.notes)


if __name__ == "__main__":
    main()
