"""`nanogpt chat`: a multi-turn conversation with a chat-finetuned run in the terminal.

Each line typed is a user message; the answer streams as it is generated, by the one generation engine
(generate.py), and stops at the template's <|end|> (conversation.py). The history is kept within the model's
context: the oldest turns (never the system prompt) are dropped when the next answer would not fit. `/reset`
starts over, `/exit` (or end of input) ends it. Read from a pipe, it prints only the answers, one per line
group, so scripts can drive it; at temperature 0 its answers are token for token those of /v1/chat/completions.
"""

import sys
from dataclasses import asdict, dataclass

from nanogpt import runtime
from nanogpt.config import check_device
from nanogpt.conversation import prompt_ids, require_chat
from nanogpt.errors import UserError
from nanogpt.generate import complete
from nanogpt.runs import check_checkpoint_choice, load_model


@dataclass
class ChatConfig:
    out_dir: str = "out"  # the chat-finetuned run to talk to
    init_from: str = "resume"  # 'resume' talks to out_dir's run; or a Hugging Face folder exported from one
    checkpoint: str = "auto"  # 'best' (best.pt), 'last' (ckpt.pt) or 'auto': the one nanoGPT would have kept
    system: str = ""  # a system prompt: the first message of every conversation
    max_new_tokens: int = 256  # the longest answer, in tokens (the context may end it sooner)
    temperature: float = 0.7  # 0: greedy, the most likely answer; 1.0 keeps the model's distribution
    top_k: int = 0  # sample only among the top_k most likely tokens (0: all)
    top_p: float = 0.95  # nucleus sampling: only the most likely tokens that together hold top_p of the mass
    seed: int = 1337  # answer i of the conversation draws from seed + i
    device: str = "auto"  # 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'
    dtype: str = "auto"  # 'auto', 'native', 'float32', 'bfloat16', 'float16'
    threads: int = 0  # CPU threads; 0: PyTorch's default, or 1 when the machine is already busy

    def to_dict(self):
        return asdict(self)


def check_chat_config(cfg):
    check_device(cfg)
    check_checkpoint_choice(cfg.checkpoint)
    if cfg.temperature < 0 or cfg.top_k < 0 or not 0 < cfg.top_p <= 1 or cfg.max_new_tokens < 1:
        raise UserError("temperature and top_k must not be negative, top_p must be in (0, 1] and max_new_tokens at "
                        "least 1")


def chat(cfg: ChatConfig, lines=None, write=None):
    """Talk to the run: each of `lines` (default: stdin) is a user message or a command; write(text) shows the
    answers as they stream (default: stdout). Returns the conversation, a list of messages."""
    check_chat_config(cfg)
    interactive = lines is None and sys.stdin.isatty()
    lines = iter(sys.stdin if lines is None else lines)
    write = write or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    device, device_type, dtype = runtime.set_up(cfg.device, cfg.dtype, threads=cfg.threads)
    model, tokenizer = load_model(cfg.init_from, cfg.out_dir, device, cfg.checkpoint)
    turns = require_chat(tokenizer, f"the run in {cfg.out_dir}" if cfg.init_from == "resume" else cfg.init_from)
    model.eval().to(device)
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    messages, answered = list(system), 0
    if interactive:
        write("chatting: /reset starts over, /exit (or Ctrl-D) ends\n")
    while True:
        if interactive:
            write("> ")
        line = next(lines, None)
        if line is None or line.strip() == "/exit":
            return messages
        line = line.rstrip("\n")
        if line.strip() == "/reset":
            messages = list(system)
            write("(conversation reset)\n")
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        # old turns go once less than a quarter of the context is left for the answer (or max_new_tokens)
        block_size = model.config.block_size
        ids, dropped = prompt_ids(tokenizer, messages, block_size, min(cfg.max_new_tokens, block_size // 4))
        if dropped:  # the history the model no longer sees goes for good, so later turns do not shift it again
            del messages[len(system):len(system) + dropped]
        answer = ""
        with runtime.autocast(device_type, dtype):
            for _, text, _ in complete(model, tokenizer, ids, min(cfg.max_new_tokens, block_size - len(ids)),
                                       temperature=cfg.temperature,
                                       top_k=cfg.top_k or None, top_p=cfg.top_p, seed=cfg.seed + answered,
                                       stop_ids=(turns["end"], tokenizer.eot_token)):
                answer += text
                write(text)
        write("\n")
        messages.append({"role": "assistant", "content": answer})
        answered += 1
