"""`nanogpt serve`: an HTTP server for a trained run, with OpenAI-style completions and a playground page.

  POST /v1/completions   OpenAI's completions API: prompt, max_tokens, temperature, top_p, top_k, stop, n, seed,
                         stream (server-sent events, ending with `data: [DONE]`)
  GET  /health           {"status": "ok", ...} and what model is loaded
  GET  /                 a self-contained playground page; /?prompt=...&autorun=1 generates on load

The model runs in one worker thread, never on the event loop, and one request generates at a time: the others
wait their turn on a lock. A bad request gets HTTP 400 and an OpenAI-shaped error; anything unexpected gets 500,
is logged, and the server keeps serving.
"""

import asyncio
import html
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from nanogpt.errors import UserError

log = logging.getLogger("nanogpt.serve")


@dataclass
class ServeConfig:
    out_dir: str = "out"  # the run to serve
    checkpoint: str = "auto"  # 'best' (best.pt), 'last' (ckpt.pt) or 'auto': the one nanoGPT would have kept
    init_from: str = "resume"  # 'resume' serves out_dir; or gpt2 … gpt2-xl, a hub name or an HF folder
    host: str = "127.0.0.1"  # the address to listen on; 0.0.0.0 serves other machines too
    port: int = 8000  # 0 picks a free port
    device: str = "auto"  # 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'
    dtype: str = "auto"  # 'auto', 'float32', 'bfloat16', 'float16'
    max_tokens_limit: int = 1024  # the most tokens one request may ask for
    max_n: int = 8  # the most completions one request may ask for (n), generated as one batch
    kv_cache: bool = True  # False re-reads the whole context for every token (for comparison)
    window_shift: int = 0  # past block_size, drop this many oldest tokens at once: 0 = half the block; 1 = exact, slow

    def to_dict(self):
        return asdict(self)


class RequestError(Exception):
    """A request the server cannot serve as asked: answered with HTTP 400."""


# ---------------------------------------------------------------------------------------------------------------
# the model side: everything that touches torch


class Generator:
    """A loaded model with its tokenizer, generating for one request at a time in a worker thread."""

    def __init__(self, model, tokenizer, name, device, autocast=None, kv_cache=True, window_shift=0):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.autocast = autocast or nullcontext
        self.kv_cache = kv_cache
        self.window_shift = window_shift
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self.lock = asyncio.Lock()  # held for a whole request, streamed ones included

    def info(self):
        cfg = self.model.config
        return {
            "model": self.name,
            "tokenizer": self.tokenizer.name,
            "vocab_size": self.tokenizer.vocab_size,
            "block_size": cfg.block_size,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_embd": cfg.n_embd,
            "parameters": self.model.get_num_params(),
            "device": str(self.device),
        }

    def encode(self, prompt):
        """Token ids of the prompt; an empty prompt starts from <|endoftext|> where the tokenizer has one."""
        try:
            ids = self.tokenizer.encode(prompt)
        except UserError as e:
            raise RequestError(str(e)) from None
        if not ids and self.tokenizer.eot_token is not None:
            ids = [self.tokenizer.eot_token]
        if not ids:
            raise RequestError("prompt must not be empty")
        return ids

    def run(self, params, ids, emit, cancelled):
        """Generate in the worker thread, passing each (index, text, finish_reason) to emit()."""
        from nanogpt.generate import complete

        events = complete(self.model, self.tokenizer, ids, params["max_tokens"], num_samples=params["n"],
                          temperature=params["temperature"], top_k=params["top_k"], top_p=params["top_p"],
                          stop=params["stop"], seed=params["seed"], kv_cache=self.kv_cache,
                          window_shift=self.window_shift)
        try:
            with self.autocast():
                for event in events:
                    if cancelled.is_set():
                        return
                    emit(event)
        finally:
            events.close()

    async def generate(self, params, ids):
        """Async iterator of (index, text, finish_reason) for one request, once it is this request's turn."""
        loop = asyncio.get_running_loop()
        queue = asyncio.Queue()
        cancelled = threading.Event()
        done = object()

        def work():
            try:
                self.run(params, ids, lambda event: loop.call_soon_threadsafe(queue.put_nowait, event), cancelled)
                loop.call_soon_threadsafe(queue.put_nowait, done)
            except BaseException as e:  # handed to the request's task, which answers 500
                loop.call_soon_threadsafe(queue.put_nowait, e)

        async with self.lock:
            future = loop.run_in_executor(self.executor, work)
            try:
                while (item := await queue.get()) is not done:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                cancelled.set()  # the client went away, or an error: stop generating, and wait for the thread
                await asyncio.shield(future)


# ---------------------------------------------------------------------------------------------------------------
# the HTTP side


def parse_request(body, max_tokens_limit, max_n):
    """Check an OpenAI completions request body; returns the generation parameters or raises RequestError.
    Fields this server does not use (model, logprobs, user, ...) are ignored, as OpenAI clients send them."""
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

    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise RequestError("'stop' must be a string or a list of strings")
    if len(stop) > 4:
        raise RequestError("'stop' takes at most 4 strings")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be true or false")
    return {
        "prompt": prompt,
        "max_tokens": number("max_tokens", 16, 0, max_tokens_limit, integer=True),
        "temperature": float(number("temperature", 1.0, 0, 2)),  # OpenAI's range
        "top_p": float(number("top_p", 1.0, 0, 1, exclusive_min=True)),
        "top_k": number("top_k", 0, 0, integer=True) or None,
        "n": number("n", 1, 1, max_n, integer=True),
        "seed": number("seed", None, integer=True),
        "stop": [s for s in stop if s],
        "stream": stream,
    }


def error_response(status, message, kind="invalid_request_error"):
    from aiohttp import web

    return web.json_response({"error": {"message": message, "type": kind}}, status=status)


def make_app(generator, max_tokens_limit=1024, max_n=8):
    """The aiohttp application serving one Generator."""
    from aiohttp import web

    @web.middleware
    async def errors_as_json(request, handler):
        try:
            return await handler(request)
        except RequestError as e:
            return error_response(400, str(e))
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return error_response(e.status, e.reason, "invalid_request_error" if e.status < 500 else "server_error")
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("request %s %s failed", request.method, request.path)
            return error_response(500, "the server failed to generate a completion; see its log", "server_error")

    async def completions(request):
        try:
            body = await request.json(loads=json.loads)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError("the request body is not valid JSON") from None
        params = parse_request(body, max_tokens_limit, max_n)
        ids = generator.encode(params["prompt"])
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": generator.name}
        if params["stream"]:
            return await stream_completion(request, params, ids, meta)
        texts = [""] * params["n"]
        finish = [None] * params["n"]
        async with aclosing(generator.generate(params, ids)) as events:
            async for index, text, reason in events:
                texts[index] += text
                finish[index] = reason or finish[index]
        # tokens of the returned text: what was generated, less any stop string
        tokens = sum(len(generator.tokenizer.encode(t)) for t in texts)
        choices = [{"text": t, "index": i, "logprobs": None, "finish_reason": f} for i, (t, f) in
                   enumerate(zip(texts, finish))]
        usage = {"prompt_tokens": len(ids), "completion_tokens": tokens, "total_tokens": len(ids) + tokens}
        return web.json_response({**meta, "choices": choices, "usage": usage})

    async def stream_completion(request, params, ids, meta):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(data):
            await response.write(f"data: {data}\n\n".encode())

        try:
            async with aclosing(generator.generate(params, ids)) as events:
                async for index, text, reason in events:
                    if text:
                        await send(json.dumps({**meta, "choices": [
                            {"text": text, "index": index, "logprobs": None, "finish_reason": None}]}))
                    if reason:
                        await send(json.dumps({**meta, "choices": [
                            {"text": "", "index": index, "logprobs": None, "finish_reason": reason}]}))
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            # the 200 status is already sent: the error goes into the stream instead
            log.exception("streamed completion failed")
            await send(json.dumps({"error": {"message": "the server failed while generating; see its log",
                                             "type": "server_error"}}))
        await send("[DONE]")
        await response.write_eof()
        return response

    async def health(request):
        return web.json_response({"status": "ok", **generator.info()})

    async def playground(request):
        page = PLAYGROUND_HTML.replace("{{MODEL}}", html.escape(generator.name))
        return web.Response(text=page, content_type="text/html")

    app = web.Application(middlewares=[errors_as_json])
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/health", health)
    app.router.add_get("/", playground)
    return app


def load_generator(cfg):
    """Load the run (or pretrained weights) a ServeConfig names, ready to generate."""
    from nanogpt import runtime
    from nanogpt.config import DEVICES, DTYPES
    from nanogpt.runs import check_checkpoint_choice, load_model

    if not DEVICES.match(cfg.device):
        raise UserError(f"unknown device '{cfg.device}': use auto, cpu, cuda, cuda:N or mps")
    if cfg.dtype not in DTYPES:
        raise UserError(f"unknown dtype '{cfg.dtype}': use one of {', '.join(DTYPES)}")
    if cfg.max_tokens_limit < 1 or cfg.max_n < 1:
        raise UserError("max_tokens_limit and max_n must be at least 1")
    check_checkpoint_choice(cfg.checkpoint)
    device = runtime.resolve_device(cfg.device)
    device_type = runtime.device_type(device)
    dtype = runtime.resolve_dtype(cfg.dtype, device_type)
    model, tokenizer = load_model(cfg.init_from, cfg.out_dir, device, cfg.checkpoint)
    model.eval().to(device)
    if not 0 <= cfg.window_shift <= model.config.block_size:
        raise UserError(f"window_shift must be between 0 and the block size, {model.config.block_size}")
    autocast = None if dtype == "float32" else (lambda: runtime.autocast(device_type, dtype))
    name = Path(cfg.out_dir).name if cfg.init_from == "resume" else cfg.init_from
    return Generator(model, tokenizer, name, device, autocast, cfg.kv_cache, cfg.window_shift)


def announce(line):
    print(line, flush=True)


def serve(cfg: ServeConfig, ready=None):
    """Load the model and serve until interrupted. ready(url) is called once the server listens."""
    try:
        from aiohttp import web
    except ImportError:
        raise UserError("nanogpt serve needs aiohttp: pip install 'nanogpt[serve]'") from None

    generator = load_generator(cfg)
    app = make_app(generator, cfg.max_tokens_limit, cfg.max_n)

    async def main():
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise UserError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror}") from None
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}"
        (ready or announce)(f"serving {generator.name} ({generator.info()['parameters']:,} parameters) on {url}")
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
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
    const response = await fetch("/v1/completions", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    });
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
