"""Chat: conversations rendered with the template and loss mask, masked SFT from a run, `nanogpt chat`,
/v1/chat/completions through the official openai client, and the export's chat template against transformers."""

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch

from nanogpt import cli
from nanogpt.conversation import TEMPLATE, render, synthetic_conversations, synthetic_text
from nanogpt.data import Dataset
from nanogpt.datasets import prepare_chat, prepare_text
from nanogpt.model import GPT, GPTConfig
from nanogpt.runs import load_run
from nanogpt.train import train
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
MALFORMED = [{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
             {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]},
             {"messages": [{"role": "user", "content": "hello"}]}]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny base run pretrained on a BPE that reserves the turn tokens, and a run chat-finetuned from it on 300
    synthetic conversations (and 3 malformed ones, left out): a few seconds in all."""
    tmp = tmp_path_factory.mktemp("chat")
    data = tmp / "data"
    (tmp / "corpus.txt").write_text(synthetic_text(400, seed=0), encoding="utf-8")
    prepare_text(str(tmp / "corpus.txt"), "base", tokenizer="bpe", vocab_size=320, turn_tokens=True,
                 data_dir=str(data), log=lambda *_: None)
    rows = [{"messages": c} for c in synthetic_conversations(300, seed=1)] + MALFORMED
    (tmp / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    log = []
    prepare_chat(str(tmp / "chat.jsonl"), "chat", tokenizer_from=str(data / "base"), data_dir=str(data),
                 log=log.append)
    settings = dict(block_size=96, eval_interval=4, max_iters=4, lr_decay_iters=4, log_interval=2)
    train(tiny_config(data, tmp / "base", dataset="base", **settings), log=lambda *_: None)
    sft_log = []
    # n_layer=4 is not the base run's 2: its weights decide, as pretrained GPT-2's do
    train(tiny_config(data, tmp / "sft", dataset="chat", init_from=str(tmp / "base"), document_aligned=True,
                      n_layer=4, **settings), log=sft_log.append)
    return {"tmp": tmp, "data": data, "base": tmp / "base", "sft": tmp / "sft", "prepare_log": log,
            "sft_log": sft_log}


def test_malformed_conversations_are_counted_and_reported(runs):
    report = next(line for line in runs["prepare_log"] if line.startswith("left out"))
    assert "3 of 303" in report
    assert all(why in report for why in ("unknown role", "empty content", "no assistant turn"))


def test_the_mask_counts_the_assistant_tokens_only(runs):
    dataset = Dataset(runs["data"] / "chat")
    assert dataset.masked and dataset.meta["chat"] == TEMPLATE
    model, tokenizer = load_run(runs["sft"])
    # the stored mask is the template's: 1 on the assistant's content and its <|end|>, nowhere else
    first = synthetic_conversations(300, seed=1)
    starts = dataset.document_starts("train", 8)
    n = int(starts[1] - starts[0])
    ids, mask = dataset.read("train", 0, n), dataset.read("train", 0, n, mask=True)
    expected = next(render(tokenizer, c) for c in first if render(tokenizer, c)[0] == ids[:-1].tolist())
    assert mask.tolist() == expected[1] + [0]
    block = 64
    x, y = dataset.batch("train", [0], block)
    rows = torch.from_numpy(dataset.read("train", 0, block + 1).astype(np.int64))[None]
    masks = dataset.read("train", 0, block + 1, mask=True)[None, 1:]

    def loss_with(targets):
        masked = torch.where(torch.from_numpy(masks == 1), targets, -1)
        return model(x, masked)[1].item()

    base = loss_with(rows[:, 1:])
    assert base == pytest.approx(model(x, y)[1].item())
    user, assistant = int(np.flatnonzero(masks[0] == 0)[3]), int(np.flatnonzero(masks[0] == 1)[0])
    changed = rows[:, 1:].clone()
    changed[0, user] = (changed[0, user] + 1) % 300
    assert loss_with(changed) == base  # a user token's target: nothing changes
    changed = rows[:, 1:].clone()
    changed[0, assistant] = (changed[0, assistant] + 1) % 300
    assert loss_with(changed) != base  # an assistant token's target: the loss changes


def test_sft_starts_from_a_run_and_says_its_loss_is_over_assistant_tokens(runs):
    from nanogpt import checkpoint

    assert any("the loss is over the assistant's tokens only" in line for line in runs["sft_log"])
    assert any("initializing from the weights of the run" in line for line in runs["sft_log"])
    saved = checkpoint.load_checkpoint(runs["sft"])  # the settings it saved describe the model it trained
    assert saved["config"]["n_layer"] == saved["model_args"]["n_layer"] == 2
    assert saved["iter_num"] == 4 and saved["tokenizer"]["chat"] == TEMPLATE


def test_a_chat_finetuning_run_resumes(runs, tmp_path):
    import shutil

    shutil.copytree(runs["sft"], tmp_path / "sft")
    log = []
    result = train(tiny_config(runs["data"], tmp_path / "sft", dataset="chat", init_from="resume", block_size=96,
                               document_aligned=True, max_iters=6, lr_decay_iters=6, eval_interval=2),
                   log=log.append)
    assert result.iter_num == 6 and any("resuming training" in line for line in log)
    assert load_run(tmp_path / "sft")[1].chat == TEMPLATE


def test_growing_the_vocabulary_keeps_the_old_logits():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=50, dropout=0.0))
    idx = torch.randint(0, 50, (1, 8))
    before = model(idx)[0]
    model.grow_vocab(64)
    after = model(idx)[0]
    assert after.shape[-1] == 64 and model.config.vocab_size == 64
    assert torch.allclose(after[..., :50], before)
    assert torch.allclose(model.transformer.wte.weight[60], model.transformer.wte.weight[:50].mean(0))


def test_gpt2_chat_tokenizer_adds_turn_tokens_past_50256():
    from nanogpt.bpe import GPT2Tokenizer
    from nanogpt.conversation import chat_tokenizer_meta, turn_ids
    from nanogpt.tokenizers import tokenizer_from_meta

    tokenizer = tokenizer_from_meta(chat_tokenizer_meta(GPT2Tokenizer()))
    assert tokenizer.vocab_size == 50261 and tokenizer.chat == TEMPLATE
    assert sorted(turn_ids(tokenizer).values()) == [50257, 50258, 50259, 50260]
    assert tokenizer.encode("<|user|>") != [turn_ids(tokenizer)["user"]]  # typed text is never a turn token


def test_a_base_run_asked_for_chat_gets_one_line(runs, capsys):
    assert cli.run("chat", [f"--out_dir={runs['base']}", "--device=cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was not chat-finetuned" in err


def test_openai_client_chat_and_the_terminal_chat_give_the_same_answers(runs):
    openai = pytest.importorskip("openai")
    pytest.importorskip("aiohttp")
    from tests.test_serve import serving

    turns = ["What is the first word of: moon star door?", "What is the last word of: rose gold fish?"]
    piped = subprocess.run([sys.executable, "-m", "nanogpt.cli", "chat", f"--out_dir={runs['sft']}",
                            "--temperature=0", "--max_new_tokens=12", "--device=cpu", "--threads=1"],
                           input="\n".join(turns) + "\n", capture_output=True, text=True, cwd=REPO, timeout=120)
    assert piped.returncode == 0, piped.stderr
    with serving(runs["sft"], max_tokens_limit=64) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        messages, expected = [], ""
        for turn in turns:
            messages.append({"role": "user", "content": turn})
            answer = client.chat.completions.create(model="x", messages=messages, temperature=0, max_tokens=12)
            text = answer.choices[0].message.content
            assert answer.object == "chat.completion" and answer.choices[0].message.role == "assistant"
            assert answer.usage.completion_tokens >= 1
            chunks = client.chat.completions.create(model="x", messages=messages, temperature=0, max_tokens=12,
                                                    stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
            messages.append({"role": "assistant", "content": text})
            expected += text + "\n"
        with serving(runs["base"]) as base:
            client = openai.OpenAI(base_url=base.url + "/v1", api_key="unused", max_retries=0)
            with pytest.raises(openai.BadRequestError, match="not chat-finetuned"):
                client.chat.completions.create(model="x", messages=messages[:1])
    assert piped.stdout == expected and len(expected.strip()) > 2, (piped.stdout, expected)


def random_conversation(rng):
    words = ["hello", " world", "\n", "42", "é", "  spaced", "<b>", "rose", "?", "!"]
    text = lambda: "".join(rng.choice(words) for _ in range(rng.randint(1, 8))).strip() or "x"
    roles = ["system"] * (rng.random() < 0.3) + ["user", "assistant"] * rng.randint(1, 3)
    return [{"role": role, "content": text()} for role in roles[:-1 if rng.random() < 0.5 else None]]


def test_export_carries_the_chat_template_and_greedy_answers_match(runs, tmp_path):
    transformers = pytest.importorskip("transformers")
    from nanogpt.conversation import turn_ids

    assert cli.run("export", [f"--out_dir={runs['sft']}", f"--to={tmp_path / 'hf'}"]) == 0
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    model, ours = load_run(runs["sft"])
    rng = random.Random(0)
    for _ in range(20):
        messages = random_conversation(rng)
        generation_prompt = messages[-1]["role"] != "assistant"
        got = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                         return_dict=False)
        assert list(got) == render(ours, messages, generation_prompt)[0]
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    end, lengths = turn_ids(ours)["end"], []
    pipe = transformers.pipeline("text-generation", model=hf_model, tokenizer=theirs)
    for messages in synthetic_conversations(3, seed=7):
        prompt = render(ours, messages[:-1], generation_prompt=True)[0]
        out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False)[0, len(prompt):]
        greedy = greedy_tokens(model.eval(), ours, prompt, 10, end)
        assert out.tolist() == greedy
        lengths.append(len(out))
        # the pipeline, given messages, applies the template itself and answers as we do
        answer = pipe(messages[:-1], max_new_tokens=10, do_sample=False)[0]["generated_text"][-1]
        assert answer == {"role": "assistant", "content": ours.decode([t for t in greedy if t != end])}
    assert max(lengths) > 1  # answers, not an immediate stop
    # the exported folder chats as the run does
    from nanogpt.chat import ChatConfig, chat

    question, answers = next(m["content"] for m in messages if m["role"] == "user"), []
    for source in (dict(out_dir=str(runs["sft"])), dict(init_from=str(tmp_path / "hf"))):
        said = []
        chat(ChatConfig(**source, temperature=0, max_new_tokens=8, device="cpu"), [question], said.append)
        answers.append("".join(said))
    assert answers[0] == answers[1] and answers[0].endswith("\n")


def greedy_tokens(model, tokenizer, prompt, n, end):
    """Our engine's greedy tokens after prompt, up to and with the first <|end|> or <|endoftext|>."""
    from nanogpt.generate import BatchEngine, Completion

    engine = BatchEngine(model, tokenizer, 1, stop_token=tokenizer.eot_token)
    c = Completion(prompt, n, temperature=0.0, stop_ids=(end,))
    engine.add(c)
    while engine.running:
        engine.step()
    return c.tokens[len(prompt):]


def test_the_playground_chat_mode_streams_the_answer(runs, tmp_path):
    pytest.importorskip("aiohttp")
    from tests.chromium import find_chromium
    from tests.test_serve import page_result, post, serving

    browser = find_chromium()
    if browser is None:
        pytest.skip("no chromium binary installed (apt-get install -y chromium) to load the playground page")
    question = "What is the first word of: moon star door?"
    with serving(runs["sft"], max_tokens_limit=64) as server:
        url = f"{server.url}/?chat=1&prompt={quote(question)}&max_tokens=12&temperature=0&autorun=1"
        state, text = asyncio.run(asyncio.wait_for(page_result(browser, url, tmp_path / "chromium"), 120))
        _, answer, _ = post(server, {"messages": [{"role": "user", "content": question}], "max_tokens": 12,
                                     "temperature": 0}, path="/v1/chat/completions")
        for bad, field in (({"messages": []}, "'messages'"), ({"messages": [{"role": "robot"}]}, "messages[0]"),
                           ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content")):
            status, body, _ = post(server, bad, path="/v1/chat/completions")
            assert status == 400 and field in body["error"]["message"]
    assert state == "done"
    assert text == f"user: {question}\nassistant: " + answer["choices"][0]["message"]["content"]


def test_a_gpt2_chat_export_renders_our_prompt_ids(tmp_path):
    transformers = pytest.importorskip("transformers")
    from nanogpt import hf
    from nanogpt.bpe import GPT2Tokenizer
    from nanogpt.conversation import chat_tokenizer_meta, hf_chat_files
    from nanogpt.tokenizers import tokenizer_from_meta

    ours = tokenizer_from_meta(chat_tokenizer_meta(GPT2Tokenizer()))
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=50304, dropout=0.0))
    hf.export(model, tmp_path / "hf", ours.describe(), log=lambda *_: None,
              finish=lambda folder: hf_chat_files(folder, ours))
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    rng = random.Random(1)
    for _ in range(5):
        messages = random_conversation(rng)
        got = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
        assert list(got) == render(ours, messages, generation_prompt=True)[0]


def test_the_history_keeps_the_system_prompt_and_drops_the_oldest_turns(runs):
    from nanogpt.conversation import prompt_ids

    _, tokenizer = load_run(runs["sft"])
    system = {"role": "system", "content": "Be brief."}
    turns = [{"role": role, "content": f"message {i} " * 4} for i in range(6) for role in ("user", "assistant")]
    messages = [system, *turns[:-1]]
    ids, dropped = prompt_ids(tokenizer, messages, block_size=60, room=10)
    assert dropped > 0 and len(ids) + 10 <= 60
    assert ids == render(tokenizer, [system, *messages[1 + dropped:]], generation_prompt=True)[0]


@pytest.mark.parametrize("args, message", [
    (["--tokenizer=char"], "a chat dataset uses the tokenizer of the model it finetunes"),
    (["--tokenizer_from=nowhere"], "is neither a prepared dataset"),
    (["--vocab_size=300"], "--vocab_size is not a setting of --format=chat"),
    (["--format=dialogue"], "unknown format 'dialogue'"),
])
def test_chat_prepare_mistakes_are_one_line(runs, capsys, args, message):
    assert cli.run("prepare", [f"--input={runs['tmp'] / 'chat.jsonl'}", "--name=x", "--format=chat",
                               f"--data_dir={runs['tmp'] / 'errors'}", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_a_line_that_is_not_json_is_named(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"messages": []}\n{oops\n', encoding="utf-8")
    assert cli.run("prepare", [f"--input={tmp_path / 'bad.jsonl'}", "--name=x", "--format=chat",
                               f"--data_dir={tmp_path}"]) == 1
    assert "line 2, is not JSON" in capsys.readouterr().err


def test_network_tasks_are_skipped_offline_in_one_line_and_read_a_local_copy(runs, tmp_path, monkeypatch, capsys):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    # no network, without waiting for the hub client's retries (they read these at import)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    run = [f"--out_dir={runs['sft']}", "--device=cpu", "--limit=2"]
    assert cli.run("eval", [*run, "--tasks=gsm8k"]) == 0
    assert "skipped" in capsys.readouterr().out
    rows = [{"question": "What is 2 plus 3?", "answer": "2 + 3 = 5\n#### 5"}] * 2
    (tmp_path / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert cli.run("eval", [*run, "--tasks=gsm8k", f"--data={tmp_path / 'gsm8k.jsonl'}"]) == 0
    results = json.loads((runs["sft"] / "eval.json").read_text())["tasks"]["gsm8k"]
    assert results["items"] == 2 and 0 <= results["accuracy"] <= 1


def test_last_number_reads_an_answer():
    from nanogpt.evaluate import last_number

    assert last_number("so 1,234 apples, then 56.") == "56"
    assert last_number("#### 1,234") == "1234" and last_number("none") is None


def test_turn_tokens_a_base_tokenizer_lacks_grow_the_model_and_the_checkpoint_records_it(runs, tmp_path):
    from nanogpt import checkpoint

    data = tmp_path / "data"
    prepare_text(str(runs["tmp"] / "corpus.txt"), "plain", tokenizer="bpe", vocab_size=300, data_dir=str(data),
                 log=lambda *_: None)
    prepare_chat(str(runs["tmp"] / "chat.jsonl"), "chat", tokenizer_from=str(data / "plain"), data_dir=str(data),
                 log=lambda *_: None)
    assert Dataset(data / "chat").vocab_size == 304  # the 4 turn tokens after the trained BPE's 300
    settings = dict(block_size=96, eval_interval=2, max_iters=2, lr_decay_iters=2)
    train(tiny_config(data, tmp_path / "base", dataset="plain", **settings), log=lambda *_: None)
    train(tiny_config(data, tmp_path / "sft", dataset="chat", init_from=str(tmp_path / "base"), **settings),
          log=lambda *_: None)
    assert checkpoint.load_checkpoint(tmp_path / "base")["model_args"]["vocab_size"] == 300
    assert checkpoint.load_checkpoint(tmp_path / "sft")["model_args"]["vocab_size"] == 304
    assert cli.run("export", [f"--out_dir={tmp_path / 'sft'}", f"--to={tmp_path / 'hf'}"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"] == 304
