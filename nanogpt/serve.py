"""`nanogpt serve`: an HTTP server for a trained run, with OpenAI-style completions and a playground page.

  POST /v1/completions   OpenAI's completions API: prompt, max_tokens, temperature, top_p, top_k, stop, n, seed,
                         stream (server-sent events, ending with `data: [DONE]`), stream_options.include_usage
  GET  /v1/models        the one model served, as OpenAI's model list
  GET  /health           {"status": "ok", ...}: what model is loaded, how many requests run and wait
  GET  /                 a self-contained playground page; /?prompt=...&autorun=1 generates on load

The model runs in one worker thread, never on the event loop. A Scheduler admits requests into a BatchEngine
(generate.py) as slots free up: a request that arrives while others generate joins the running batch at the next
step, and leaves it when it finishes. Past the batch, requests wait in a bounded queue (429 beyond it); each has a
time limit (504); a client that goes away frees its slot at the next step. Every request gets a whole answer or an
OpenAI-shaped error (400 bad request, 401 no API key, 415 not JSON, 503 shutting down, 500 anything unexpected,
which is logged), and the server keeps serving. SIGTERM stops it gracefully: no new requests, running ones finish
(or are cancelled after --shutdown_timeout), exit 0.
"""

import asyncio
import hmac
import html
import ipaddress
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections import deque
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from nanogpt.errors import UserError

log = logging.getLogger("nanogpt.serve")

API_KEY_ENV = "NANOGPT_API_KEY"
MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_STOP_CHARS = 64  # matching costs each token time in proportion to this


@dataclass
class ServeConfig:
    out_dir: str = "out"  # the run to serve
    checkpoint: str = "auto"  # 'best' (best.pt), 'last' (ckpt.pt) or 'auto': the one nanoGPT would have kept
    init_from: str = "resume"  # 'resume' serves out_dir; or gpt2 … gpt2-xl, a hub name or an HF folder
    host: str = "127.0.0.1"  # the address to listen on; 0.0.0.0 serves other machines too (set an api_key)
    port: int = 8000  # 0 picks a free port
    device: str = "auto"  # 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'
    dtype: str = "auto"  # 'auto', 'float32', 'bfloat16', 'float16'
    max_batch: int = 16  # completions generated together in one batch; 1 serves one at a time
    max_queue: int = 64  # requests that may wait for a place in the batch; past it, 429 with Retry-After
    timeout: float = 600.0  # seconds a request may take, waiting included, before it is cancelled (504)
    max_tokens_limit: int = 1024  # the most tokens one request may ask for
    max_n: int = 8  # the most completions one request may ask for (n); at most max_batch
    max_body_kb: int = 256  # the largest request body, in KiB
    api_key: str = ""  # require 'Authorization: Bearer KEY' on all but /health and / (or set NANOGPT_API_KEY)
    cors_origin: str = ""  # send CORS headers allowing this origin ('*' for any); empty: none
    shutdown_timeout: float = 30.0  # on SIGTERM, seconds running requests get to finish before being cancelled
    kv_cache: bool = True  # must stay True: the batch engine is built on the KV cache (False is refused)
    window_shift: int = 0  # past block_size, drop this many oldest tokens at once: 0 = half the block; 1 = exact, slow

    def to_dict(self):
        return asdict(self)


class Refused(Exception):
    """A request the server answers with an error instead of a completion."""

    status = 400
    kind = "invalid_request_error"

    def __init__(self, message, headers=None):
        super().__init__(message)
        self.headers = headers or {}


class RequestError(Refused):
    """A request the server cannot serve as asked: answered with HTTP 400, naming the field."""


class QueueFull(Refused):
    status = 429
    kind = "rate_limit_error"


class NotJson(Refused):
    status = 415


class ShuttingDown(Refused):
    status = 503
    kind = "server_error"


class TimedOut(Refused):
    status = 504
    kind = "timeout"


# ---------------------------------------------------------------------------------------------------------------
# the model side: one worker thread drives the batch engine


class Job:
    """One request's completions, and the queue their events reach the request's handler through."""

    def __init__(self, completions, loop):
        self.completions = completions
        self.loop = loop
        self.events = asyncio.Queue()
        self.unfinished = len(completions)  # counted by the worker thread

    def deliver(self, item):
        """From the worker thread: an event (index, text, finish_reason), or an exception that ends the job."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class Scheduler:
    """Feeds requests to a BatchEngine from one worker thread.

    A request waits in a FIFO queue until the batch has room for all its completions, then joins it at the next
    step; at most max_queue requests may wait beyond the places the batch has free. Only the worker thread touches the engine; the event loop only queues and cancels jobs.
    """

    def __init__(self, engine, max_queue, autocast=nullcontext):
        self.engine = engine
        self.max_queue = max_queue
        self.autocast = autocast
        self.cond = threading.Condition()
        self.waiting = deque()  # jobs not yet started
        self.running = []  # jobs in the batch
        self.to_cancel = []  # jobs whose clients left: their completions leave the batch before the next step
        self.free = engine.free  # places in the batch after the last admission: jobs waiting for those do not queue
        self.refusing = False  # shutting down: no new jobs
        self.closed = False  # the worker ends, failing what is left
        self.thread = threading.Thread(target=self._work, name="generate", daemon=True)
        self.thread.start()

    def submit(self, job):
        with self.cond:
            if self.refusing:
                raise ShuttingDown("the server is shutting down")
            if len(self.waiting) >= self.max_queue + self.free:
                raise QueueFull(f"the server is busy: {len(self.waiting)} requests are waiting already; retry "
                                "later", headers={"Retry-After": "1"})
            self.waiting.append(job)
            self.cond.notify()

    def cancel(self, job):
        """Drop a job whose client left or ran out of time; its slots are free at the next step."""
        with self.cond:
            if job in self.waiting:
                self.waiting.remove(job)
            elif job in self.running:
                self.running.remove(job)
                self.to_cancel.append(job)
                self.cond.notify()

    def counts(self):
        with self.cond:
            return {"running": len(self.running), "waiting": len(self.waiting)}

    def idle(self):
        with self.cond:
            return not self.waiting and not self.running

    def refuse(self):
        with self.cond:
            self.refusing = True

    def close(self):
        """Stop the worker; jobs still waiting or running end with ShuttingDown. Blocks until it has stopped."""
        with self.cond:
            self.refusing = self.closed = True
            self.cond.notify()
        self.thread.join()

    def _work(self):
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.closed or self.waiting or self.to_cancel or self.engine.running)
                if self.closed:
                    self._fail(list(self.waiting) + self.running, ShuttingDown("the server is shutting down"))
                    self.waiting.clear()
                    return
                self._drop_cancelled()
                self._admit()
                self.free = self.engine.free
                if not self.engine.running:
                    continue
            try:
                with self.autocast():
                    events = self.engine.step()
            except Exception as e:  # a bug or a device failure: the batch's requests get a 500, serving goes on
                log.exception("generation step failed")
                with self.cond:
                    self._fail(self.running, e)
                continue
            self._deliver(events)

    def _drop_cancelled(self):
        for job in self.to_cancel:
            for c in job.completions:
                if c.finish_reason is None:
                    self.engine.remove(c)
        self.to_cancel = []

    def _admit(self):
        while self.waiting and self.engine.free >= len(self.waiting[0].completions):
            job = self.waiting.popleft()
            for c in job.completions:
                self.engine.add(c)
            self.running.append(job)

    def _fail(self, jobs, error):
        self.engine.clear()
        for job in jobs:
            job.deliver(error)
        self.running = [job for job in self.running if job not in jobs]

    def _deliver(self, events):
        finished = []
        for c, text, reason in events:
            job, index = c.tag
            job.deliver((index, text, reason))
            if reason is not None:
                job.unfinished -= 1
                if job.unfinished == 0:
                    finished.append(job)
        with self.cond:
            self.running = [job for job in self.running if job not in finished]
            self.free = self.engine.free


# ---------------------------------------------------------------------------------------------------------------
# requests: checking them, and the HTTP handlers


def parse_request(body, max_tokens_limit, max_n):
    """Check an OpenAI completions request body; returns the generation parameters or raises RequestError naming
    the field. Fields this server does not use (model, logprobs, user, ...) are ignored, as OpenAI clients send them."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    prompt = body.get("prompt")
    if prompt is None:
        raise RequestError("'prompt' is required")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # OpenAI accepts a list of prompts; a list of one is common
    if not isinstance(prompt, str):
        raise RequestError("'prompt' must be a string")

    def number(name, default, minimum=None, maximum=None, integer=False, exclusive_min=False):
        value = body.get(name)
        if value is None:
            return default
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise RequestError(f"'{name}' must be {'an integer' if integer else 'a number'}, got {value!r}")
        if minimum is not None and (value <= minimum if exclusive_min else value < minimum):
            raise RequestError(f"'{name}' must be {'above' if exclusive_min else 'at least'} {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise RequestError(f"'{name}' must be at most {maximum}, got {value}")
        return value

    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object")
    return {
        "prompt": prompt,
        "max_tokens": number("max_tokens", 16, 0, max_tokens_limit, integer=True),
        "temperature": float(number("temperature", 1.0, 0, 2)),  # OpenAI's range
        "top_p": float(number("top_p", 1.0, 0, 1, exclusive_min=True)),
        "top_k": number("top_k", 0, 0, integer=True) or None,
        "n": number("n", 1, 1, max_n, integer=True),
        "seed": number("seed", None, 0, 2**63 - 1, integer=True),  # what a torch.Generator takes
        "stop": parse_stop(body.get("stop")),
        "stream": stream,
        "include_usage": bool(options.get("include_usage")),
    }


def parse_stop(stop):
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise RequestError("'stop' must be a string or a list of strings")
    if len(stop) > MAX_STOP_STRINGS:
        raise RequestError(f"'stop' takes at most {MAX_STOP_STRINGS} strings, got {len(stop)}")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise RequestError(f"each 'stop' string must be at most {MAX_STOP_CHARS} characters long")
    return [s for s in stop if s]


def error_response(status, message, kind="invalid_request_error", headers=None):
    from aiohttp import web

    return web.json_response({"error": {"message": message, "type": kind}}, status=status, headers=headers)


def choice(index, text, reason):
    return {"text": text, "index": index, "logprobs": None, "finish_reason": reason}


class Api:
    """The HTTP side: checks requests, queues them with the Scheduler and answers from their events."""

    def __init__(self, scheduler, tokenizer, name, info, max_tokens_limit=1024, max_n=8, timeout=600.0,
                 max_body_kb=256, api_key="", cors_origin=""):
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.name = name
        self.info = info  # what /health says about the model
        self.max_tokens_limit = max_tokens_limit
        self.max_n = max_n
        self.timeout = timeout
        self.max_body_kb = max_body_kb
        self.api_key = api_key
        self.cors_origin = cors_origin
        self.created = int(time.time())

    def encode(self, prompt):
        """Token ids of the prompt; an empty prompt starts from <|endoftext|> where the tokenizer has one."""
        try:
            ids = self.tokenizer.encode(prompt)
        except UserError as e:
            raise RequestError(str(e)) from None
        if not ids and self.tokenizer.eot_token is not None:
            ids = [self.tokenizer.eot_token]
        if not ids:
            raise RequestError("'prompt' must not be empty")
        block_size = self.info["block_size"]
        if len(ids) > block_size:
            raise RequestError(f"'prompt' is {len(ids)} tokens long; this model reads at most {block_size}")
        return ids

    def make_job(self, params, ids):
        from nanogpt.generate import Completion

        seed = params["seed"]
        completions = [Completion(ids, params["max_tokens"], params["temperature"], params["top_k"],
                                  params["top_p"], None if seed is None else seed + i, tuple(params["stop"]))
                       for i in range(params["n"])]  # choice i of a seeded request is seed + i alone
        job = Job(completions, asyncio.get_running_loop())
        for i, c in enumerate(completions):
            c.tag = (job, i)
        return job

    async def events(self, job):
        """The job's events (index, text, finish_reason) until every completion has finished."""
        timer = None
        if self.timeout > 0:
            # the time limit arrives as one more item in the queue: asyncio.wait_for around each get() could
            # swallow the cancellation of a client that leaves just as an event arrives (Python 3.11)
            message = f"the request took longer than the server's limit of {self.timeout:g} s"
            timer = job.loop.call_later(self.timeout, job.events.put_nowait, TimedOut(message))
        try:
            unfinished = len(job.completions)
            while unfinished:
                item = await job.events.get()
                if isinstance(item, Exception):
                    raise item
                unfinished -= item[2] is not None
                yield item
        finally:
            if timer is not None:
                timer.cancel()

    async def completions(self, request):
        from aiohttp import web

        if request.content_type != "application/json":
            raise NotJson("send the request as JSON, with 'Content-Type: application/json'")
        try:
            body = await request.json(loads=json.loads)
        except web.HTTPRequestEntityTooLarge:
            raise RequestError(f"the request body is larger than the server's limit of {self.max_body_kb} KiB") \
                from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError("the request body is not valid JSON") from None
        params = parse_request(body, self.max_tokens_limit, self.max_n)
        ids = self.encode(params["prompt"])
        job = self.make_job(params, ids)
        self.scheduler.submit(job)
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.name}
        try:
            if params["stream"]:
                return await self.stream(request, job, params, meta)
            texts, finish = [""] * params["n"], [None] * params["n"]
            async for index, text, reason in self.events(job):
                texts[index] += text
                finish[index] = reason
        finally:
            self.scheduler.cancel(job)  # a no-op once it finished; else the client left or time ran out
        choices = [choice(i, t, f) for i, (t, f) in enumerate(zip(texts, finish))]
        return web.json_response({**meta, "choices": choices, "usage": usage(ids, job)})

    async def stream(self, request, job, params, meta):
        from aiohttp import web

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(data):
            await response.write(f"data: {data}\n\n".encode())

        try:
            async for index, text, reason in self.events(job):
                if text:
                    await send(json.dumps({**meta, "choices": [choice(index, text, None)]}))
                if reason:
                    await send(json.dumps({**meta, "choices": [choice(index, "", reason)]}))
            if params["include_usage"]:
                await send(json.dumps({**meta, "choices": [], "usage": usage(job.completions[0].prompt, job)}))
        except Refused as e:  # the 200 status is already sent: the error goes into the stream instead
            await send(json.dumps({"error": {"message": str(e), "type": e.kind}}))
        except Exception:
            log.exception("streamed completion failed")
            await send(json.dumps({"error": {"message": "the server failed while generating; see its log",
                                             "type": "server_error"}}))
        await send("[DONE]")
        await response.write_eof()
        return response

    async def models(self, request):
        from aiohttp import web

        model = {"id": self.name, "object": "model", "created": self.created, "owned_by": "nanogpt"}
        return web.json_response({"object": "list", "data": [model]})

    async def health(self, request):
        from aiohttp import web

        return web.json_response({"status": "ok", **self.info, **self.scheduler.counts()})

    async def playground(self, request):
        from aiohttp import web

        page = PLAYGROUND_HTML.replace("{{MODEL}}", html.escape(self.name))
        return web.Response(text=page, content_type="text/html")

    async def preflight(self, request):
        from aiohttp import web

        return web.Response(status=204)


def usage(prompt_ids, job):
    """Token counts: every token generated, <|endoftext|> and those of a stop string included."""
    prompt, generated = len(prompt_ids), sum(c.generated for c in job.completions)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


OPEN_PATHS = {"/health", "/"}  # no API key needed: the health check, and the static playground page (it asks for one)


def middlewares(api):
    """Authentication, CORS headers and errors as OpenAI-shaped JSON."""
    from aiohttp import web

    @web.middleware
    async def authenticate(request, handler):
        if api.api_key and request.path not in OPEN_PATHS and request.method != "OPTIONS":
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {api.api_key}".encode()):
                return error_response(401, "a valid API key is required: 'Authorization: Bearer KEY'")
        return await handler(request)

    @web.middleware
    async def cors(request, handler):
        response = await handler(request)
        if api.cors_origin:
            response.headers["Access-Control-Allow-Origin"] = api.cors_origin
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        return response

    @web.middleware
    async def errors_as_json(request, handler):
        try:
            return await handler(request)
        except Refused as e:
            return error_response(e.status, str(e), e.kind, e.headers)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return error_response(e.status, e.reason, "invalid_request_error" if e.status < 500 else "server_error")
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("request %s %s failed", request.method, request.path)
            return error_response(500, "the server failed to generate a completion; see its log", "server_error")

    return [cors, errors_as_json, authenticate]


def make_app(api):
    """The aiohttp application serving an Api. Run it with handler_cancellation=True (as `serve` does), so that a
    client leaving a non-streamed request cancels its handler, which frees its slot."""
    from aiohttp import web

    app = web.Application(middlewares=middlewares(api), client_max_size=api.max_body_kb * 1024)
    app.router.add_post("/v1/completions", api.completions)
    app.router.add_get("/v1/models", api.models)
    app.router.add_get("/health", api.health)
    app.router.add_get("/", api.playground)
    if api.cors_origin:
        app.router.add_route("OPTIONS", "/{path:.*}", api.preflight)
    return app


# ---------------------------------------------------------------------------------------------------------------
# loading and running


def check_serve_config(cfg):
    from nanogpt.config import check_device
    from nanogpt.runs import check_checkpoint_choice

    check_device(cfg)
    for name in ("max_tokens_limit", "max_n", "max_batch", "max_queue", "max_body_kb"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.max_n > cfg.max_batch:
        raise UserError(f"max_n ({cfg.max_n}) must be at most max_batch ({cfg.max_batch}): a request's "
                        "completions run side by side")
    if cfg.timeout < 0 or cfg.shutdown_timeout < 0:
        raise UserError("timeout and shutdown_timeout must not be negative (timeout 0: no limit)")
    check_checkpoint_choice(cfg.checkpoint)


def load_api(cfg):
    """Load the run (or pretrained weights) a ServeConfig names and start its generation thread."""
    from nanogpt import runtime
    from nanogpt.generate import BatchEngine
    from nanogpt.runs import load_model

    check_serve_config(cfg)
    device = runtime.resolve_device(cfg.device)
    device_type = runtime.device_type(device)
    dtype = runtime.resolve_dtype(cfg.dtype, device_type)
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
            "device": str(device), "max_batch": cfg.max_batch}
    return Api(Scheduler(engine, cfg.max_queue, autocast), tokenizer, name, info, cfg.max_tokens_limit,
               cfg.max_n, cfg.timeout, cfg.max_body_kb, api_key_of(cfg), cfg.cors_origin)


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


PLAYGROUND_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>nanogpt playground</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; }
  textarea, pre { width: 100%; box-sizing: border-box; font: 14px/1.4 ui-monospace, monospace; }
  textarea { height: 8rem; }
  pre { white-space: pre-wrap; background: #f4f4f4; padding: .75rem; min-height: 6rem; }
  #settings { display: flex; flex-wrap: wrap; gap: .75rem; margin: .5rem 0; }
  #settings input { width: 5rem; }
  #settings #api_key { width: 10rem; }
  #status { color: #666; margin-left: .5rem; }
</style>
</head>
<body>
<h1>nanogpt playground</h1>
<p>Model: <b>{{MODEL}}</b></p>
<textarea id="prompt" placeholder="Prompt">ROMEO:</textarea>
<div id="settings">
  <label>max_tokens <input id="max_tokens" type="number" value="200" min="0"></label>
  <label>temperature <input id="temperature" type="number" value="0.8" min="0" max="2" step="0.1"></label>
  <label>top_p <input id="top_p" type="number" value="1" min="0.01" max="1" step="0.05"></label>
  <label>top_k <input id="top_k" type="number" value="200" min="0"></label>
  <label>stop <input id="stop" type="text" placeholder="none"></label>
  <label>API key <input id="api_key" type="password" placeholder="if the server has one"></label>
</div>
<button id="generate">Generate</button><span id="status"></span>
<pre id="output" data-state="idle"></pre>
<script>
const $ = (id) => document.getElementById(id);

async function generate() {
  const output = $("output"), button = $("generate");
  output.textContent = ""; output.dataset.state = "running"; $("status").textContent = "generating…";
  button.disabled = true;
  const body = {
    prompt: $("prompt").value, stream: true,
    max_tokens: parseInt($("max_tokens").value, 10), temperature: parseFloat($("temperature").value),
    top_p: parseFloat($("top_p").value), top_k: parseInt($("top_k").value, 10),
  };
  if ($("stop").value) body.stop = $("stop").value;
  try {
    const headers = {"Content-Type": "application/json"};
    if ($("api_key").value) headers["Authorization"] = "Bearer " + $("api_key").value;
    const response = await fetch("/v1/completions", {method: "POST", headers, body: JSON.stringify(body)});
    if (!response.ok) {
      const error = await response.json();
      throw new Error(error.error ? error.error.message : response.statusText);
    }
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let buffer = "", finish = null;
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      // server-sent events are separated by a blank line; the last piece may be incomplete
      const events = buffer.split("\\n\\n");
      buffer = events.pop();
      for (const event of events) {
        const data = event.replace(/^data: /, "");
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        output.textContent += chunk.choices[0].text;
        finish = chunk.choices[0].finish_reason || finish;
      }
    }
    output.dataset.state = "done";
    $("status").textContent = "finished: " + finish;
  } catch (e) {
    output.dataset.state = "error";
    $("status").textContent = "error: " + e.message;
  } finally {
    button.disabled = false;
  }
}

$("generate").addEventListener("click", generate);
// /?prompt=...&autorun=1 fills the prompt and generates at once (handy for links and tests)
const params = new URLSearchParams(location.search);
for (const key of ["prompt", "max_tokens", "temperature", "top_p", "top_k", "stop"]) {
  if (params.has(key)) $(key).value = params.get(key);
}
if (params.get("autorun") === "1") generate();
</script>
</body>
</html>
"""
