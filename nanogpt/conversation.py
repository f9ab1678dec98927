"""Conversations as tokens: the chat template, the loss mask, checking conversations, the template as Hugging Face
writes it, the synthetic task shipped for an offline demo, and exact-match scoring.

The template (TEMPLATE): every message is its role's turn token, its content, and <|end|>:

    <|system|>Be brief.<|end|><|user|>Hi<|end|><|assistant|>Hello!<|end|>

A prompt for the model's next answer ends with <|assistant|>, and generation stops at <|end|>. In a chat dataset
each conversation is followed by <|endoftext|>, as documents are; the loss mask is 1 on the assistant's content
and its <|end|> (what the model must learn to say, and when to stop), 0 on everything else (the turn tokens,
system and user text, <|endoftext|>), so finetuning teaches answers, not questions. The turn tokens are special
tokens (bpe.TURN_TOKENS): text typed by a user never becomes one.

What a run is for travels with its tokenizer description: a chat dataset's meta.json, and so every run trained on
it, says "chat": TEMPLATE. A run without it (a base run) is refused by `nanogpt chat` and /v1/chat/completions.
"""

import json
import random

from nanogpt.bpe import TURN_TOKENS
from nanogpt.errors import UserError

TEMPLATE = "nanogpt-chat-1"  # the template's name in meta.json and checkpoints
ROLES = ("system", "user", "assistant")
END = "<|end|>"

# the same template in Jinja, as transformers' apply_chat_template renders it: the turn tokens are special tokens
# of the exported tokenizer, so its text splits into exactly our ids
HF_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def turn_ids(tokenizer):
    """{role: its turn token's id, 'end': <|end|>'s id}; a tokenizer without the turn tokens is refused."""
    special = tokenizer.special_ids
    missing = [t for t in TURN_TOKENS if t not in special]
    if missing:
        raise UserError(f"this tokenizer has no chat turn tokens ({', '.join(missing)}): prepare a chat dataset "
                        "with `nanogpt prepare --format=chat` and finetune on it")
    return {**{role: special[f"<|{role}|>"] for role in ROLES}, "end": special[END]}


def require_chat(tokenizer, what):
    """Refuse, in one line, to chat with a run that was not chat-finetuned: its answers would be nonsense."""
    if getattr(tokenizer, "chat", None) != TEMPLATE:
        raise UserError(f"{what} was not chat-finetuned (it was not trained on a chat dataset), so it can only "
                        "continue text: use `nanogpt sample` or /v1/completions, or finetune it on conversations "
                        "first (docs/guides/chat.md)")
    return turn_ids(tokenizer)


def problem(messages):
    """What is wrong with a conversation (a short reason, used to count them), or None when it is usable."""
    if not isinstance(messages, list) or not messages:
        return "not a list of messages"
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return "unknown role"
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            return "empty content"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn"
    return None


def render(tokenizer, messages, generation_prompt=False):
    """(token ids, loss mask) of messages in the template; generation_prompt adds <|assistant|>, where the
    model's answer begins. The mask is 1 on the assistant's content and <|end|> only."""
    turns = turn_ids(tokenizer)
    ids, mask = [], []
    for m in messages:
        content = tokenizer.encode(m["content"])
        learned = int(m["role"] == "assistant")
        ids += [turns[m["role"]], *content, turns["end"]]
        mask += [0] + [learned] * (len(content) + 1)
    if generation_prompt:
        ids.append(turns["assistant"])
        mask.append(0)
    return ids, mask


def render_for_training(tokenizer, messages):
    """A conversation as a chat dataset stores it: rendered, then <|endoftext|> (masked) to end the document."""
    ids, mask = render(tokenizer, messages)
    return ids + [tokenizer.eot_token], mask + [0]


def prompt_ids(tokenizer, messages, block_size, room):
    """The prompt for the next answer: the conversation rendered with <|assistant|>, its oldest turns (after a
    system message) dropped until `room` tokens fit after it in the block. Returns (ids, turns dropped)."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system):]
    for dropped in range(len(rest)):
        ids, _ = render(tokenizer, system + rest[dropped:], generation_prompt=True)
        if len(ids) + room <= block_size:
            return ids, dropped
    raise UserError(f"the last message does not fit in the model's context of {block_size} tokens with room for "
                    f"{room} more: shorten it (or ask for fewer new tokens)")


def chat_tokenizer_meta(tokenizer):
    """The tokenizer description of a chat dataset: the base tokenizer with the turn tokens (added after its last id
    where it lacks them) and the template's name. A character vocabulary is refused."""
    meta = tokenizer.describe()
    if meta["tokenizer"] == "char":
        raise UserError("a character-level tokenizer cannot hold the chat turn tokens: prepare conversations with "
                        "--tokenizer=gpt2, or --tokenizer_from=a BPE dataset or run")
    missing = tuple(t for t in TURN_TOKENS if t not in tokenizer.special_ids)
    if missing and meta["tokenizer"] == "gpt2":
        meta["special_tokens"] = list(meta.get("special_tokens", ())) + list(missing)
        meta["vocab_size"] += len(missing)
    elif missing:
        from nanogpt.bpe import with_special_tokens

        meta["tokenizer_json"] = with_special_tokens(meta["tokenizer_json"], missing)
        meta["vocab_size"] += len(missing)
    return dict(meta, chat=TEMPLATE)


def read_jsonl(path):
    """The `messages` of each line of a JSONL file (a line may also be a bare list of messages)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}, line {number}, is not JSON ({e.msg}): one conversation per line, as "
                                '{"messages": [{"role": "user", "content": "..."}, ...]}') from None
            rows.append(row.get("messages") if isinstance(row, dict) else row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# the synthetic task: questions with one right answer, generated from a seed, for an offline demo of SFT

WORDS = ("apple", "river", "stone", "cloud", "horse", "light", "bread", "queen", "sword", "field", "night", "crown",
         "ship", "tree", "fire", "snow", "wind", "gold", "rose", "bird", "king", "moon", "star", "door", "book",
         "lamp", "wolf", "bell", "lake", "hill", "salt", "milk", "ring", "iron", "rain", "sand", "fish", "bear",
         "leaf", "wine", "coat", "road", "seed", "rock", "song", "wall", "boat", "corn")
SYSTEM_PROMPT = "Answer with the word asked for, nothing else."
SYNTHETIC_COUNT = 20_000  # the conversations `prepare --input=synthetic` writes
SYNTHETIC_SEED = 1337  # ... drawn with this seed (prepare's default --seed)


def synthetic_conversation(rng):
    """One conversation of the synthetic task: which word of a list is first or last, with one right answer. A
    pretrained model that has never seen the template answers with prose; finetuning teaches it the turns and
    the task, and held-out lists (new draws) show whether it learned the task rather than the examples."""
    words = rng.sample(WORDS, rng.randint(3, 6))
    kind = rng.choice(("first", "last"))
    question = f"What is the {kind} word of: {' '.join(words)}?"
    answer = words[0] if kind == "first" else words[-1]
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return ([{"role": "system", "content": SYSTEM_PROMPT}] if rng.random() < 0.5 else []) + messages


def synthetic_conversations(count, seed):
    """count conversations of the synthetic task, the same ones for the same seed."""
    rng = random.Random(seed)
    return [synthetic_conversation(rng) for _ in range(count)]


def synthetic_held_out(count, train_seed=SYNTHETIC_SEED, train_count=SYNTHETIC_COUNT):
    """count conversations of the synthetic task whose questions are not among the train_count drawn with
    train_seed (what `prepare --input=synthetic` writes): a fair test of what finetuning taught."""
    seen = {c[-2]["content"] for c in synthetic_conversations(train_count, train_seed)}
    rng, held_out = random.Random(f"held-out {train_seed}"), []
    while len(held_out) < count:
        c = synthetic_conversation(rng)
        if c[-2]["content"] not in seen:
            seen.add(c[-2]["content"])
            held_out.append(c)
    return held_out


def synthetic_text(count, seed):
    """The words of the synthetic task as plain text (no turns), so a BPE trained for the demo knows them."""
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.sample(WORDS, 5)) for _ in range(count))


# ---------------------------------------------------------------------------------------------------------------
# scoring: does the model give the right answer to held-out conversations?


def exact_match(model, tokenizer, conversations, slack=8, max_batch=64, check=None):
    """The share of conversations whose last (assistant) message the model reproduces exactly (or, with
    check(answer, expected), as a task judges it), answering greedily from the ones before; and its answers. Each
    answer may run `slack` tokens past the expected one's length (more could only make it wrong). One batch of the
    generation engine (generate.py)."""
    from nanogpt.generate import BatchEngine, Completion

    turns = turn_ids(tokenizer)
    engine = BatchEngine(model, tokenizer, max_batch, stop_token=tokenizer.eot_token)
    answers, pending = [""] * len(conversations), list(enumerate(conversations))
    while pending or engine.running:
        while pending and engine.free:
            i, messages = pending.pop(0)
            room = len(tokenizer.encode(messages[-1]["content"])) + slack
            ids, _ = prompt_ids(tokenizer, messages[:-1], model.config.block_size, room)
            engine.add(Completion(ids, room, temperature=0.0, stop_ids=(turns["end"],), tag=i))
        for c, text, _ in engine.step():
            answers[c.tag] += text
    check = check or (lambda answer, expected: answer.strip() == expected.strip())
    right = sum(bool(check(a, m[-1]["content"])) for a, m in zip(answers, conversations))
    return right / max(1, len(conversations)), answers


def exported_chat_meta(folder, meta):
    """The tokenizer description of a model folder, marked as chat (with GPT-2's added turn tokens) when
    hf_chat_files wrote our template into it: an exported chat run chats again when loaded from its folder."""
    from pathlib import Path

    path = Path(folder) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if config.get("chat_template") != HF_CHAT_TEMPLATE:
        return meta
    if meta.get("tokenizer") == "gpt2":
        meta = dict(meta, special_tokens=config.get("additional_special_tokens", []))
        meta["vocab_size"] += len(meta["special_tokens"])
    return dict(meta, chat=TEMPLATE)


def hf_chat_files(folder, tokenizer):
    """Add the chat template to an exported folder's tokenizer_config.json (with the turn tokens for GPT-2's
    vocab.json/merges.txt, which cannot list them) and <|end|> as an end of generation. Nothing for a base run."""
    from pathlib import Path

    if getattr(tokenizer, "chat", None) != TEMPLATE:
        return
    folder, turns = Path(folder), turn_ids(tokenizer)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = HF_CHAT_TEMPLATE
    if tokenizer.name == "gpt2":
        added = {i: t for t, i in tokenizer.special_ids.items() if t in TURN_TOKENS}
        config["added_tokens_decoder"] = {str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                                   "normalized": False, "single_word": False}
                                          for i, t in sorted(added.items())}
        config["additional_special_tokens"] = [t for _, t in sorted(added.items())]
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    generation = folder / "generation_config.json"
    settings = json.loads(generation.read_text(encoding="utf-8")) if generation.is_file() else {}
    eos = settings.get("eos_token_id")
    settings["eos_token_id"] = [e for e in ([eos] if isinstance(eos, int) else eos or [])] + [turns["end"]]
    generation.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
