"""The HTTP API of `nanogpt serve`, read top to bottom: its errors, checking a request, the handlers, then the
middleware and the application that routes to them.

  POST /v1/completions   OpenAI's completions API: prompt, max_tokens, temperature, top_p, top_k, stop, n, seed,
                         stream (server-sent events, ending with `data: [DONE]`), stream_options.include_usage
  POST /v1/chat/completions   OpenAI's chat API, the same settings with `messages` for `prompt`: for a
                         chat-finetuned run, rendered with its chat template (conversation.py); an answer ends at
                         <|end|>. A base run is refused with one line.
  GET  /v1/models        the one model served, as OpenAI's model list
  GET  /health           {"status": "ok", ...}: what model is loaded, how many requests run and wait
  GET  /                 the playground page (playground.html, package data); /?prompt=...&autorun=1 generates

Every request gets a whole answer or an OpenAI-shaped error (400 bad request, 401 no API key, 415 not JSON, 429 the
queue is full, 503 shutting down, 504 past the time limit, 500 anything unexpected, which is logged), and one
access log line: method, path, status and time. The handlers only queue jobs with the Scheduler (scheduler.py) and
answer from their events; the model runs in its worker thread, never on the event loop.
"""

import asyncio
import hmac
import html
import json
import logging
import time
import uuid
from functools import lru_cache
from importlib import resources

from nanogpt.errors import UserError
from nanogpt.generate import Completion
from nanogpt.scheduler import Job, QueueFull, ShuttingDown

log = logging.getLogger("nanogpt.serve")

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_STOP_CHARS = 64  # matching costs each token time in proportion to this
OPEN_PATHS = {"/health", "/"}  # no API key needed: the health check, and the static playground page (it asks for one)


# ---------------------------------------------------------------------------------------------------------------
# errors: what a request is refused with


class Refused(Exception):
    """A request the server answers with an error instead of a completion."""

    status = 400
    kind = "invalid_request_error"

    def __init__(self, message, headers=None):
        super().__init__(message)
        self.headers = headers or {}


class RequestError(Refused):
    """A request the server cannot serve as asked: answered with HTTP 400, naming the field."""


class NotJson(Refused):
    status = 415


class TimedOut(Refused):
    status = 504
    kind = "timeout"


REFUSALS = (Refused, QueueFull, ShuttingDown)


def refusal(error):
    """(HTTP status, OpenAI error type, headers) for a refused request."""
    if isinstance(error, QueueFull):
        return 429, "rate_limit_error", {"Retry-After": "1"}
    if isinstance(error, ShuttingDown):
        return 503, "server_error", {}
    return error.status, error.kind, error.headers


@lru_cache(maxsize=1)
def playground_page():
    """The playground page, read once from the package (pyproject.toml ships it as package data)."""
    return resources.files("nanogpt").joinpath("playground.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# requests: checking them, and the HTTP handlers


def parse_prompt(body):
    prompt = body.get("prompt")
    if prompt is None:
        raise RequestError("'prompt' is required")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # OpenAI accepts a list of prompts; a list of one is common
    if not isinstance(prompt, str):
        raise RequestError("'prompt' must be a string")
    return prompt


def parse_messages(body):
    """A chat request's messages as [{"role", "content"}], content as text (OpenAI's list of text parts joined)."""
    from nanogpt.conversation import ROLES

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {\"role\": ..., \"content\": ...}")
    parsed = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RequestError(f"messages[{i}] must have a 'role' of {', '.join(ROLES)}")
        content = m.get("content")
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}].content must be text")
        parsed.append({"role": m["role"], "content": content})
    return parsed


def parse_request(body, max_tokens_limit, max_n, chat=False):
    """Check an OpenAI completions (or, with chat, chat completions) request body; returns the generation parameters
    or raises RequestError naming the field. Fields this server does not use (model, logprobs, user, ...) are
    ignored, as OpenAI clients send them."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    prompt = parse_messages(body) if chat else parse_prompt(body)

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
    if chat and body.get("max_tokens") is None:  # the newer name; a chat answer may run to the context's end
        body = dict(body, max_tokens=body.get("max_completion_tokens"))
    return {
        "prompt": prompt,
        "max_tokens": number("max_tokens", None if chat else 16, 0, max_tokens_limit, integer=True),
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


def chat_choice(index, text, reason):
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
            "finish_reason": reason}


def chat_chunk_choice(index, text, reason, first=False):
    delta = ({"role": "assistant"} if first else {}) | ({"content": text} if text or first else {})
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}


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

    def chat_prompt(self, messages, max_tokens):
        """The prompt ids of a chat request, and the <|end|> token its answers stop at; a base run is refused."""
        from nanogpt.conversation import render, require_chat

        try:
            turns = require_chat(self.tokenizer, f"the model {self.name}")
            ids, _ = render(self.tokenizer, messages, generation_prompt=True)
        except UserError as e:
            raise RequestError(str(e)) from None
        block_size = self.info["block_size"]
        if len(ids) + (max_tokens or 1) > block_size:
            raise RequestError(f"the messages are {len(ids)} tokens long with the chat template; this model reads "
                               f"at most {block_size}, answer included: send fewer or shorter messages")
        return ids, (turns["end"],)

    def make_job(self, params, ids, stop_ids=()):
        seed = params["seed"]
        max_tokens = params["max_tokens"]
        if max_tokens is None:  # a chat answer with no limit: up to the end of the context, within the server's
            max_tokens = min(self.max_tokens_limit, self.info["block_size"] - len(ids))
        completions = [Completion(ids, max_tokens, params["temperature"], params["top_k"],
                                  params["top_p"], None if seed is None else seed + i, tuple(params["stop"]),
                                  stop_ids) for i in range(params["n"])]  # choice i of a seeded request is seed + i
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
        return await self.answer(request, chat=False)

    async def chat_completions(self, request):
        return await self.answer(request, chat=True)

    async def answer(self, request, chat):
        """A completions or chat completions request: checked, queued, answered whole or streamed."""
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
        params = parse_request(body, self.max_tokens_limit, self.max_n, chat)
        ids, stop_ids = self.chat_prompt(params["prompt"], params["max_tokens"]) if chat else (
            self.encode(params["prompt"]), ())
        job = self.make_job(params, ids, stop_ids)
        self.scheduler.submit(job)
        meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": self.name}
        try:
            if params["stream"]:
                return await self.stream(request, job, params, meta, chat)
            texts, finish = [""] * params["n"], [None] * params["n"]
            async for index, text, reason in self.events(job):
                texts[index] += text
                finish[index] = reason
        finally:
            self.scheduler.cancel(job)  # a no-op once it finished; else the client left or time ran out
        choices = [(chat_choice if chat else choice)(i, t, f) for i, (t, f) in enumerate(zip(texts, finish))]
        return web.json_response({**meta, "choices": choices, "usage": usage(ids, job)})

    async def stream(self, request, job, params, meta, chat=False):
        from aiohttp import web

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(data):
            await response.write(f"data: {data}\n\n".encode())

        if chat:  # OpenAI's chunks: the role first, then pieces of content, then the finish reason
            meta = dict(meta, object="chat.completion.chunk")
            for index in range(params["n"]):
                await send(json.dumps({**meta, "choices": [chat_chunk_choice(index, "", None, first=True)]}))
        piece = chat_chunk_choice if chat else choice
        try:
            async for index, text, reason in self.events(job):
                if text:
                    await send(json.dumps({**meta, "choices": [piece(index, text, None)]}))
                if reason:
                    await send(json.dumps({**meta, "choices": [piece(index, "", reason)]}))
            if params["include_usage"]:
                await send(json.dumps({**meta, "choices": [], "usage": usage(job.completions[0].prompt, job)}))
        except REFUSALS as e:  # the 200 status is already sent: the error goes into the stream instead
            await send(json.dumps({"error": {"message": str(e), "type": refusal(e)[1]}}))
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

        page = playground_page().replace("{{MODEL}}", html.escape(self.name))
        return web.Response(text=page, content_type="text/html", charset="utf-8")

    async def preflight(self, request):
        from aiohttp import web

        return web.Response(status=204)


def usage(prompt_ids, job):
    """Token counts: every token generated, <|endoftext|> and those of a stop string included."""
    prompt, generated = len(prompt_ids), sum(c.generated for c in job.completions)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


# ---------------------------------------------------------------------------------------------------------------
# middleware and the application


def middlewares(api):
    """An access log line per request, CORS headers, errors as OpenAI-shaped JSON, and authentication (outermost
    first)."""
    from aiohttp import web

    @web.middleware
    async def access_log(request, handler):
        started = time.perf_counter()
        status = 499  # nginx's "client closed request": the handler was cancelled because its client left
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            log.info("%s %s %d %.1f ms", request.method, request.path, status, (time.perf_counter() - started) * 1000)

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
        except REFUSALS as e:
            status, kind, headers = refusal(e)
            return error_response(status, str(e), kind, headers)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return error_response(e.status, e.reason, "invalid_request_error" if e.status < 500 else "server_error")
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("request %s %s failed", request.method, request.path)
            return error_response(500, "the server failed to generate a completion; see its log", "server_error")

    return [access_log, cors, errors_as_json, authenticate]


def make_app(api):
    """The aiohttp application serving an Api. Run it with handler_cancellation=True (as `serve` does), so that a
    client leaving a non-streamed request cancels its handler, which frees its slot."""
    from aiohttp import web

    app = web.Application(middlewares=middlewares(api), client_max_size=api.max_body_kb * 1024)
    app.router.add_post("/v1/completions", api.completions)
    app.router.add_post("/v1/chat/completions", api.chat_completions)
    app.router.add_get("/v1/models", api.models)
    app.router.add_get("/health", api.health)
    app.router.add_get("/", api.playground)
    if api.cors_origin:
        app.router.add_route("OPTIONS", "/{path:.*}", api.preflight)
    return app
