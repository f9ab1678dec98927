"""`nanogpt serve`: an HTTP server for a trained run, with OpenAI-style completions and a playground page.

This module loads the model and runs the server: its settings (ServeConfig), their checks, loading, the security
warnings, and the lifecycle (listen, then on SIGTERM or SIGINT stop listening, let running requests finish or cancel
them after --shutdown_timeout, exit 0). The HTTP API is api.py; the worker thread that feeds requests to the
generation engine is scheduler.py; the engine is generate.py.
"""

import asyncio
import ipaddress
import logging
import os
import signal
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from nanogpt.errors import UserError

log = logging.getLogger("nanogpt.serve")

API_KEY_ENV = "NANOGPT_API_KEY"


@dataclass
class ServeConfig:
    out_dir: str = "out"  # the run to serve
    checkpoint: str = "auto"  # 'best' (best.pt), 'last' (ckpt.pt) or 'auto': the one nanoGPT would have kept
    init_from: str = "resume"  # 'resume' serves out_dir; or gpt2 … gpt2-xl, a hub name or an HF folder
    host: str = "127.0.0.1"  # the address to listen on; 0.0.0.0 serves other machines too (set an api_key)
    port: int = 8000  # 0 picks a free port
    device: str = "auto"  # 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'
    dtype: str = "auto"  # 'auto', 'native', 'float32', 'bfloat16', 'float16'
    threads: int = 0  # CPU threads; 0: PyTorch's default, capped at the idle cores
    max_batch: int = 16  # completions generated together in one batch; 1 serves one at a time
    max_queue: int = 64  # requests that may wait for a place in the batch; past it, 429 with Retry-After
    timeout: float = 600.0  # seconds a request may take, waiting included, before it is cancelled (504)
    max_tokens_limit: int = 1024  # the most tokens one request may ask for
    max_n: int = 0  # the most completions one request may ask for (n), at most max_batch; 0: max_batch
    max_body_kb: int = 256  # the largest request body, in KiB
    api_key: str = ""  # require 'Authorization: Bearer KEY' on all but /health and / (or set NANOGPT_API_KEY)
    cors_origin: str = ""  # send CORS headers allowing this origin ('*' for any); empty: none
    shutdown_timeout: float = 30.0  # on SIGTERM, seconds running requests get to finish before being cancelled
    kv_cache: bool = True  # must stay True: the batch engine is built on the KV cache (False is refused)
    window_shift: int = 0  # past block_size, drop this many oldest tokens at once: 0 = half the block; 1 = exact, slow

    def to_dict(self):
        return asdict(self)


def check_serve_config(cfg):
    from nanogpt.config import check_device
    from nanogpt.runs import check_checkpoint_choice

    check_device(cfg)
    for name in ("max_tokens_limit", "max_batch", "max_queue", "max_body_kb"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.max_n < 0:
        raise UserError(f"max_n must be 0 (as many as max_batch) or more, got {cfg.max_n}")
    if cfg.max_n > cfg.max_batch:
        raise UserError(f"max_n ({cfg.max_n}) must be at most max_batch ({cfg.max_batch}): a request's "
                        "completions run side by side")
    if cfg.timeout < 0 or cfg.shutdown_timeout < 0:
        raise UserError("timeout and shutdown_timeout must not be negative (timeout 0: no limit)")
    check_checkpoint_choice(cfg.checkpoint)


def load_api(cfg):
    """Load the run (or pretrained weights) a ServeConfig names and start its generation thread."""
    from nanogpt import runtime
    from nanogpt.api import Api
    from nanogpt.generate import BatchEngine
    from nanogpt.runs import load_model
    from nanogpt.scheduler import Scheduler

    check_serve_config(cfg)
    device, device_type, dtype = runtime.set_up(cfg.device, cfg.dtype, threads=cfg.threads)
    model, tokenizer = load_model(cfg.init_from, cfg.out_dir, device, cfg.checkpoint)
    model.eval().to(device)
    if not 0 <= cfg.window_shift <= model.config.block_size:
        raise UserError(f"window_shift must be between 0 and the block size, {model.config.block_size}")
    if not cfg.kv_cache:
        raise UserError("serve batches requests with a KV cache; kv_cache=False is for `sample` only")
    autocast = nullcontext if dtype == "float32" else (lambda: runtime.autocast(device_type, dtype))
    engine = BatchEngine(model, tokenizer, cfg.max_batch, cfg.window_shift,
                         stop_token=getattr(tokenizer, "eot_token", None))
    name = Path(cfg.out_dir).name if cfg.init_from == "resume" else cfg.init_from
    info = {"model": name, "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size,
            "block_size": model.config.block_size, "n_layer": model.config.n_layer,
            "n_head": model.config.n_head, "n_embd": model.config.n_embd, "parameters": model.get_num_params(),
            "device": str(device), "max_batch": cfg.max_batch, "chat": getattr(tokenizer, "chat", None) is not None}
    return Api(Scheduler(engine, cfg.max_queue, autocast), tokenizer, name, info, cfg.max_tokens_limit,
               cfg.max_n or cfg.max_batch, cfg.timeout, cfg.max_body_kb, api_key_of(cfg), cfg.cors_origin)


def api_key_of(cfg):
    return cfg.api_key or os.environ.get(API_KEY_ENV, "")


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def security_warnings(cfg):
    """What to warn about before serving as configured."""
    warnings = []
    if not is_loopback(cfg.host) and not api_key_of(cfg):
        warnings.append(f"serving on {cfg.host} without an API key: anyone who can reach this port may use the "
                        f"model; set {API_KEY_ENV} or --api_key")
    return warnings


def announce(line):
    print(line, flush=True)


async def drain(runner, api, grace):
    """Graceful shutdown: stop listening, refuse new requests, give running ones `grace` seconds to finish, cancel
    the rest (their clients get an error), then close every connection."""
    for site in list(runner.sites):
        await site.stop()
    api.scheduler.refuse()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while not api.scheduler.idle() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    await loop.run_in_executor(None, api.scheduler.close)
    await runner.cleanup()


def serve(cfg: ServeConfig, ready=None):
    """Load the model and serve until SIGTERM or SIGINT, then drain and return. ready(line) is called once the
    server listens."""
    try:
        from aiohttp import web
    except ImportError:
        raise UserError("nanogpt serve needs aiohttp: pip install 'nanogpt[serve]'") from None

    from nanogpt.api import make_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    api = load_api(cfg)
    app = make_app(api)

    async def main():
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            api.scheduler.close()
            raise UserError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror}") from None
        for warning in security_warnings(cfg):
            log.warning(warning)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        host, port = runner.addresses[0][:2]
        (ready or announce)(f"serving {api.name} ({api.info['parameters']:,} parameters) on http://{host}:{port}")
        await stop.wait()
        log.info("shutting down: finishing running requests (at most %g s)", cfg.shutdown_timeout)
        await drain(runner, api, cfg.shutdown_timeout)
        log.info("stopped")

    asyncio.run(main())
