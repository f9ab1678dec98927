"""`nanogpt serve` over real HTTP: completions, streaming, every bad request and limit, concurrency, disconnects,
the API key, shutdown, the official openai client, the playground page."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
import torch

pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

from tests.chromium import devtools_port, find_chromium  # noqa: E402

from nanogpt import checkpoint  # noqa: E402
from nanogpt.model import GPT, GPTConfig  # noqa: E402
from nanogpt.generate import BatchEngine  # noqa: E402
from nanogpt.api import make_app  # noqa: E402
from nanogpt.serve import ServeConfig, load_api, security_warnings  # noqa: E402
from nanogpt.tokenizers import CharTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHARS = "\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
MODEL_ARGS = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=False, vocab_size=64, dropout=0.0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A random char-level model saved as a run (vocabulary padded from 61 characters to 64 ids)."""
    out_dir = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    state = {
        "model": GPT(GPTConfig(**MODEL_ARGS)).state_dict(),
        "model_args": MODEL_ARGS,
        "iter_num": 0,
        "best_val_loss": 9.9,
        "config": {},
        "tokenizer": CharTokenizer(CHARS).describe(),
    }
    checkpoint.save_checkpoint(out_dir, state, {"optimizer": {}, "iter_num": 0}, is_best=False)
    return out_dir


class ServerThread:
    """The app served on a free port of 127.0.0.1 by an event loop in a background thread, as `serve` runs it."""

    def __init__(self, app):
        self.app = app
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        self.loop = asyncio.new_event_loop()
        runner = web.AppRunner(self.app, handler_cancellation=True)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        self.url = "http://127.0.0.1:%d" % runner.addresses[0][1]
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(30)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@contextmanager
def serving(run_dir, **settings):
    """A server for the run with these ServeConfig settings."""
    cfg = ServeConfig(out_dir=str(run_dir), device="cpu", dtype="float32", **settings)
    api = load_api(cfg)
    try:
        with ServerThread(make_app(api)) as running:
            running.api = api
            yield running
    finally:
        api.scheduler.close()


@pytest.fixture(scope="module")
def server(run_dir):
    with serving(run_dir, max_tokens_limit=64, max_body_kb=4) as running:
        yield running


@pytest.fixture(scope="module")
def one_slot(run_dir):
    """One completion at a time, one waiting, and requests long enough (minutes) never to end by themselves."""
    with serving(run_dir, max_batch=1, max_n=1, max_queue=1, max_tokens_limit=10**6) as running:
        yield running


LONG = {"prompt": "ab", "max_tokens": 10**6}


def post(server, body, raw=None, headers=None, path="/v1/completions", timeout=60):
    """POST to the server; returns (status, parsed JSON body, headers)."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def get(server, path, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(server.url + path, headers=headers or {}),
                                    timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def open_stream(server, body):
    request = urllib.request.Request(server.url + "/v1/completions", data=json.dumps(dict(body, stream=True)).encode(),
                                     headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=60)


def stream(server, body):
    """POST a streamed completion; returns the data of each server-sent event."""
    with open_stream(server, body) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = response.read().decode()
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: "):] for e in events]


def text_of(server, body):
    status, answer, _ = post(server, body)
    assert status == 200, answer
    return answer["choices"][0]["text"]


def test_completion(server, run_dir):
    status, body, _ = post(server, {"prompt": "To be", "max_tokens": 12, "temperature": 0})
    assert status == 200
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == run_dir.name
    [choice] = body["choices"]
    assert len(choice["text"]) == 12 and set(choice["text"]) <= set(CHARS)
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}


def test_completion_is_reproducible_with_a_seed_and_honours_stop(server):
    request = {"prompt": "ab", "max_tokens": 40, "temperature": 1.0, "top_p": 0.9, "top_k": 20, "seed": 5}
    text = text_of(server, request)
    assert text == text_of(server, request)
    stop = text[20:22]
    _, stopped, _ = post(server, dict(request, stop=[stop, "never produced!"]))
    cut = text.find(stop)
    assert stopped["choices"][0] == {"text": text[:cut], "index": 0, "logprobs": None, "finish_reason": "stop"}
    # usage counts the tokens generated, the stop string's included (one token per character here)
    assert stopped["usage"]["completion_tokens"] == cut + len(stop)


def test_sample_and_the_server_give_the_same_text_for_the_same_seed(server, run_dir):
    """`sample --seed=S --num_samples=N` and a request with seed=S, n=N and the same settings: one engine, one
    sampler, sample i seeded S + i on both sides. 30 tokens pass the block size of 16, so the window moves too."""
    from nanogpt.sample import SampleConfig, sample

    settings = dict(temperature=0.9, top_k=20, top_p=0.95)
    samples = sample(SampleConfig(out_dir=str(run_dir), device="cpu", start="To be", num_samples=3,
                                  max_new_tokens=30, seed=5, **settings), write=lambda text: None)
    status, body, _ = post(server, {"prompt": "To be", "max_tokens": 30, "n": 3, "seed": 5, **settings})
    assert status == 200
    assert ["To be" + c["text"] for c in body["choices"]] == samples
    assert len(set(samples)) == 3


def test_every_request_gets_an_access_log_line_4xx_included(server, caplog):
    with caplog.at_level("INFO", logger="nanogpt.serve"):
        assert post(server, {"prompt": "a", "max_tokens": -1})[0] == 400
        assert get(server, "/nowhere")[0] == 404
        assert post(server, {"prompt": "a", "max_tokens": 1})[0] == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "nanogpt.serve"]
    for method, path, status in (("POST", "/v1/completions", 400), ("GET", "/nowhere", 404),
                                 ("POST", "/v1/completions", 200)):
        assert any(line.startswith(f"{method} {path} {status} ") and line.endswith(" ms") for line in lines), lines


def test_the_playground_page_is_package_data_served_as_html(server, run_dir):
    with urllib.request.urlopen(server.url + "/", timeout=30) as response:
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        page = response.read().decode()
    shipped = (REPO / "nanogpt" / "playground.html").read_text()
    assert page == shipped.replace("{{MODEL}}", run_dir.name)
    assert 'nanogpt = ["playground.html"]' in (REPO / "pyproject.toml").read_text()


def test_max_batch_1_needs_no_other_setting(run_dir):
    """No default contradicts another setting's legal value: max_n follows max_batch unless set."""
    with serving(run_dir, max_batch=1) as running:
        status, body, _ = post(running, {"prompt": "a", "max_tokens": 2})
        assert status == 200
        status, body, _ = post(running, {"prompt": "a", "max_tokens": 2, "n": 2})
        assert status == 400 and "'n' must be at most 1" in body["error"]["message"]


def test_streamed_completion(server):
    events = stream(server, {"prompt": "ab", "max_tokens": 10, "temperature": 0,
                             "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10
    chunks = chunks[:-1]
    assert len(chunks) >= 3
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    streamed = "".join(c["choices"][0]["text"] for c in chunks)
    assert streamed == text_of(server, {"prompt": "ab", "max_tokens": 10, "temperature": 0})


def test_several_completions_in_one_request(server):
    status, body, _ = post(server, {"prompt": "ab", "max_tokens": 5, "n": 3, "seed": 1})
    assert status == 200 and [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(len(c["text"]) == 5 for c in body["choices"])
    assert body["usage"]["completion_tokens"] == 15


def test_models_lists_the_served_model(server, run_dir):
    status, raw = get(server, "/v1/models")
    assert status == 200 and json.loads(raw)["data"][0]["id"] == run_dir.name


# each case: (body, raw bytes), and the text the error message must contain: the field it is about
BAD_REQUESTS = {
    "not JSON": (None, b"{prompt: nope", "not valid JSON"),
    "not an object": ([1, 2], None, "JSON object"),
    "missing prompt": ({"max_tokens": 5}, None, "'prompt'"),
    "prompt of the wrong type": ({"prompt": 42}, None, "'prompt'"),
    "empty prompt": ({"prompt": ""}, None, "'prompt'"),
    "prompt longer than the block": ({"prompt": "a" * 17}, None, "'prompt'"),
    "character outside the vocabulary": ({"prompt": "caf\u00e9"}, None, "vocabulary"),
    "negative max_tokens": ({"prompt": "a", "max_tokens": -1}, None, "'max_tokens'"),
    "max_tokens beyond the limit": ({"prompt": "a", "max_tokens": 65}, None, "'max_tokens'"),
    "max_tokens of the wrong type": ({"prompt": "a", "max_tokens": "5"}, None, "'max_tokens'"),
    "max_tokens a float": ({"prompt": "a", "max_tokens": 2.5}, None, "'max_tokens'"),
    "negative temperature": ({"prompt": "a", "temperature": -1}, None, "'temperature'"),
    "top_p of zero": ({"prompt": "a", "top_p": 0}, None, "'top_p'"),
    "top_p above one": ({"prompt": "a", "top_p": 1.5}, None, "'top_p'"),
    "stop of the wrong type": ({"prompt": "a", "stop": 3}, None, "'stop'"),
    "too many stop strings": ({"prompt": "a", "stop": list("abcde")}, None, "'stop'"),
    "stop string too long": ({"prompt": "a", "stop": "x" * 65}, None, "'stop'"),
    "stream not a bool": ({"prompt": "a", "stream": "yes"}, None, "'stream'"),
    "n too large": ({"prompt": "a", "n": 100}, None, "'n'"),
    "seed out of range": ({"prompt": "a", "seed": 2**64}, None, "'seed'"),
    "negative seed": ({"prompt": "a", "seed": -1}, None, "'seed'"),
    "body too large": ({"prompt": "a" * 5000}, None, "request body"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_is_a_400_naming_the_field_and_the_server_keeps_serving(server, case):
    body, raw, named = BAD_REQUESTS[case]
    status, answer, _ = post(server, body, raw)
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error" and named in answer["error"]["message"]
    assert post(server, {"prompt": "a", "max_tokens": 2})[0] == 200


def test_only_json_is_accepted(server):
    status, answer, _ = post(server, None, b"prompt=a", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and "application/json" in answer["error"]["message"]


def test_unexpected_failure_is_a_500_and_the_server_keeps_serving(server, monkeypatch):
    def broken(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(BatchEngine, "step", broken)
    status, answer, _ = post(server, {"prompt": "a", "max_tokens": 2})
    assert status == 500 and answer["error"]["type"] == "server_error"
    events = stream(server, {"prompt": "a", "max_tokens": 2})
    assert "error" in json.loads(events[-2]) and events[-1] == "[DONE]"
    monkeypatch.undo()
    assert post(server, {"prompt": "a", "max_tokens": 2})[0] == 200


def test_unknown_path_and_method_are_json_errors(server):
    for method, path in (("GET", "/nowhere"), ("GET", "/v1/completions")):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(server.url + path, method=method), timeout=30)
        assert info.value.code in (404, 405) and "error" in json.loads(info.value.read())


def test_health(server):
    status, raw = get(server, "/health")
    info = json.loads(raw)
    assert info["status"] == "ok" and info["block_size"] == 16 and info["vocab_size"] == 61
    assert info["tokenizer"] == "char" and info["device"] == "cpu" and info["waiting"] == 0


def test_concurrent_requests_all_complete_and_each_matches_its_solo_run(server):
    requests = [{"prompt": "ab"[: 1 + i % 2], "max_tokens": 20 + i, "temperature": 0.5 * (i % 3), "seed": i,
                 "stop": ["zz"] if i % 4 == 0 else None} for i in range(8)]
    alone = [text_of(server, body) for body in requests]

    def send(i):
        if i % 2:
            chunks = [json.loads(e) for e in stream(server, requests[i])[:-1]]
            return "".join(c["choices"][0]["text"] for c in chunks)
        return text_of(server, requests[i])

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(send, range(8))) == alone


def test_past_the_queue_a_429_with_retry_after(one_slot):
    with open_stream(one_slot, LONG) as running:
        assert running.readline().startswith(b"data: ")
        with open_stream(one_slot, LONG) as waiting:  # the one place in the queue
            status, answer, headers = post(one_slot, LONG)
            assert status == 429 and headers["Retry-After"] and answer["error"]["type"] == "rate_limit_error"
            waiting.close()
    assert text_of(one_slot, {"prompt": "a", "max_tokens": 3})


def test_a_client_leaving_frees_its_slot_streamed_or_not(one_slot):
    # the abandoned requests would take minutes; with one slot, the next request can only finish once it is free
    with open_stream(one_slot, LONG) as response:
        assert response.readline().startswith(b"data: ")
    assert len(text_of(one_slot, {"prompt": "a", "max_tokens": 3})) == 3
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        post(one_slot, LONG, timeout=0.5)
    assert len(text_of(one_slot, {"prompt": "a", "max_tokens": 3})) == 3
    assert json.loads(get(one_slot, "/health")[1])["running"] == 0


def test_a_request_past_the_time_limit_is_a_504(run_dir):
    with serving(run_dir, timeout=0.5, max_tokens_limit=10**6) as server:
        status, answer, _ = post(server, LONG)
        assert status == 504 and "limit" in answer["error"]["message"]
        events = stream(server, LONG)
        assert "error" in json.loads(events[-2]) and events[-1] == "[DONE]"
        assert json.loads(get(server, "/health")[1])["running"] == 0
        assert text_of(server, {"prompt": "a", "max_tokens": 3})


def test_api_key_is_required_when_set(run_dir, monkeypatch):
    monkeypatch.setenv("NANOGPT_API_KEY", "sekrit")
    with serving(run_dir) as server:
        body = {"prompt": "a", "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekrit"}):
            status, answer, _ = post(server, body, headers=headers)
            assert status == 401 and "API key" in answer["error"]["message"]
        assert get(server, "/v1/models")[0] == 401
        assert post(server, body, headers={"Authorization": "Bearer sekrit"})[0] == 200
        assert get(server, "/health")[0] == 200 and get(server, "/")[0] == 200  # the page asks for the key
        assert "Access-Control-Allow-Origin" not in urllib.request.urlopen(server.url + "/health").headers


def test_serving_beyond_loopback_without_a_key_warns(monkeypatch):
    monkeypatch.delenv("NANOGPT_API_KEY", raising=False)
    assert security_warnings(ServeConfig(host="0.0.0.0")) and security_warnings(ServeConfig(host="192.168.1.5"))
    assert not security_warnings(ServeConfig(host="0.0.0.0", api_key="k"))
    for host in ("127.0.0.1", "localhost", "::1"):
        assert not security_warnings(ServeConfig(host=host))
    monkeypatch.setenv("NANOGPT_API_KEY", "k")
    assert not security_warnings(ServeConfig(host="0.0.0.0"))


def test_cors_headers_only_when_asked_for(run_dir):
    with serving(run_dir, cors_origin="https://example.org") as server:
        request = urllib.request.Request(server.url + "/v1/completions", method="OPTIONS")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.headers["Access-Control-Allow-Origin"] == "https://example.org"
            assert "Authorization" in response.headers["Access-Control-Allow-Headers"]


def test_openai_client_plain_and_streamed(server, run_dir):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    expected = text_of(server, {"prompt": "To be", "max_tokens": 12, "temperature": 0})
    answer = client.completions.create(model=run_dir.name, prompt="To be", max_tokens=12, temperature=0)
    assert answer.choices[0].text == expected and answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 12
    chunks = list(client.completions.create(model=run_dir.name, prompt="To be", max_tokens=12, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=run_dir.name, prompt="To be", max_tokens=1000)


def test_gpt2_bpe_run_stops_at_end_of_text(tmp_path):
    """A BPE model rigged to always predict <|endoftext|> ends every completion at once, finish_reason 'stop'."""
    args = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, bias=True, vocab_size=50304, dropout=0.0)
    model = GPT(GPTConfig(**args))
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied: the token embeddings too
        model.lm_head.weight[50256] = 1.0
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)  # every position's final state is all ones: only 50256 scores
    state = {"model": model.state_dict(), "model_args": args, "iter_num": 0, "best_val_loss": 9.9, "config": {},
             "tokenizer": {"tokenizer": "gpt2", "vocab_size": 50257}}
    checkpoint.save_checkpoint(tmp_path, state, {"optimizer": {}, "iter_num": 0}, is_best=False)
    with serving(tmp_path) as server:
        status, answer, _ = post(server, {"prompt": "Hello", "max_tokens": 10, "temperature": 0})
    assert status == 200 and answer["choices"][0]["text"] == "" and answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] == 1


def serve_process(run_dir, *extra):
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanogpt.cli", "serve", f"--out_dir={run_dir}", "--port=0", "--device=cpu", *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),  # see conftest.one_thread
    )
    line = proc.stdout.readline()
    assert line.startswith("serving "), line + proc.stderr.read()
    return proc, line.split(" on ")[-1].strip()


def test_serve_command_listens_answers_and_drains_on_sigterm(run_dir):
    proc, url = serve_process(run_dir, "--max_tokens_limit=100000")
    try:
        with urllib.request.urlopen(url + "/health", timeout=30) as response:
            assert json.loads(response.read())["status"] == "ok"
        server = type("Server", (), {"url": url})
        with open_stream(server, {"prompt": "ab", "max_tokens": 100}) as response:
            assert response.readline().startswith(b"data: ")
            proc.send_signal(signal.SIGTERM)  # mid-request: the request still finishes whole
            rest = response.read().decode()
        assert proc.wait(60) == 0
        events = [json.loads(e[len("data: "):]) for e in rest.split("\n\n") if e and e != "data: [DONE]"]
        assert events[-1]["choices"][0]["finish_reason"] == "length" and rest.endswith("data: [DONE]\n\n")
        assert "shutting down" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait(30)


def test_serve_command_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nanogpt.cli", "serve", f"--out_dir={tmp_path}", "--device=cpu"],
                          cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: no checkpoint at") and proc.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------------------------
# the playground page, in a real browser


async def page_result(browser, url, user_data_dir):
    """Open url in headless Chromium through the DevTools protocol; wait for the playground's output to finish
    and return (state, text)."""
    import aiohttp

    async with devtools_port(browser, user_data_dir, "--disable-quic") as port:
        async with aiohttp.ClientSession() as session:
            async with session.put(f"http://127.0.0.1:{port}/json/new?{quote(url, safe='')}") as response:
                target = await response.json(content_type=None)
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                # poll the page: the output's data-state turns 'done' (or 'error') when the stream ends
                check = ("(() => { const o = document.getElementById('output');"
                         " return o && o.dataset.state !== 'running' && o.dataset.state !== 'idle'"
                         " ? [o.dataset.state, o.textContent] : null; })()")
                for message_id in range(1, 600):
                    await ws.send_json({"id": message_id, "method": "Runtime.evaluate",
                                        "params": {"expression": check, "returnByValue": True}})
                    while (reply := await ws.receive_json(timeout=30)).get("id") != message_id:
                        pass
                    value = reply.get("result", {}).get("result", {}).get("value")
                    if value:
                        return tuple(value)
                    await asyncio.sleep(0.1)
        raise AssertionError("the playground never finished generating")


def test_playground_page_streams_a_completion(server, tmp_path):
    browser = find_chromium()
    if browser is None:
        reason = "no chromium binary installed (apt-get install -y chromium) to load the playground page"
        warnings.warn(reason)  # shown in pytest's summary even without -rs
        pytest.skip(reason)
    url = server.url + "/?prompt=To%20be&max_tokens=20&temperature=0&autorun=1"
    state, text = asyncio.run(asyncio.wait_for(page_result(browser, url, tmp_path / "chromium"), 120))
    expected = text_of(server, {"prompt": "To be", "max_tokens": 20, "temperature": 0, "top_k": 200})
    assert state == "done"
    assert text == expected
