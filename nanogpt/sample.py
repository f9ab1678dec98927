"""Sampling from a trained run: nanoGPT's sample.py as a function of a SampleConfig.

All samples are generated as one batch by the generation engine (nanogpt/generate.py), the one `serve` runs. The first sample streams to the
terminal token by token; each later one is printed from what it has generated so far once the one before it
ends, then streams on, so the output reads exactly like nanoGPT's: prompt and sample, then a separator.
"""

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from nanogpt import runtime
from nanogpt.config import check_device
from nanogpt.errors import UserError
from nanogpt.generate import complete
from nanogpt.runs import check_checkpoint_choice, load_model


@dataclass
class SampleConfig:
    init_from: str = "resume"  # 'resume' samples the run in out_dir; or gpt2 … gpt2-xl, a hub name or an HF folder
    out_dir: str = "out"  # the run to sample from
    checkpoint: str = "auto"  # 'best' (best.pt), 'last' (ckpt.pt) or 'auto': the one nanoGPT would have kept
    start: str = "\n"  # the prompt, or FILE:path to read it from a file
    num_samples: int = 10  # how many samples to draw
    max_new_tokens: int = 500  # tokens generated per sample
    temperature: float = 0.8  # 1.0 keeps the model's distribution, lower is more conservative
    top_k: int = 200  # sample only among the top_k most likely tokens (0: all)
    top_p: float = 1.0  # nucleus sampling: only the most likely tokens that together hold top_p of the mass
    stop: str = ""  # end a sample when it generates this text, cut off (escapes need quotes: --stop="'\n'")
    seed: int = 1337  # sample i draws from seed + i, as choice i of a server request with this seed: same text
    kv_cache: bool = True  # False re-reads the whole context for every token (with window_shift=1: nanoGPT's sampler)
    window_shift: int = 0  # past block_size, drop this many oldest tokens at once: 0 = half the block; 1 = exact, slow
    device: str = "auto"  # 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'
    dtype: str = "auto"  # 'auto', 'native', 'float32', 'bfloat16', 'float16'
    compile: object = False  # torch.compile the model (True/False/'auto')
    threads: int = 0  # CPU threads; 0: PyTorch's default, capped at the idle cores

    def to_dict(self):
        return asdict(self)


def validate_sample_config(cfg):
    check_device(cfg)
    if cfg.temperature < 0:
        raise UserError(f"temperature must not be negative, got {cfg.temperature}")
    if cfg.num_samples < 1 or cfg.max_new_tokens < 0:
        raise UserError("num_samples must be at least 1 and max_new_tokens at least 0")
    if cfg.top_k < 0:
        raise UserError(f"top_k must not be negative, got {cfg.top_k}")
    if not 0 < cfg.top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.window_shift < 0:
        raise UserError(f"window_shift must be 0 (half the block) or more, got {cfg.window_shift}")
    if not cfg.init_from:
        raise UserError("init_from must be 'resume', a GPT-2 name such as 'gpt2-xl', a hub name or a local folder")
    check_checkpoint_choice(cfg.checkpoint)


def read_prompt(start):
    if start.startswith("FILE:"):
        path = Path(start[5:])
        if not path.is_file():
            raise UserError(f"prompt file {path} not found")
        return path.read_text(encoding="utf-8")
    return start


def write_stdout(text):
    sys.stdout.write(text)
    sys.stdout.flush()


SEPARATOR = "---------------"


class OrderedPrinter:
    """Writes samples generated side by side one after another: the earliest unfinished sample streams live,
    later ones are held until their turn comes."""

    def __init__(self, num_samples, prompt, write):
        self.prompt = prompt
        self.write = write
        self.held = [""] * num_samples
        self.done = [False] * num_samples
        self.current = 0
        write(prompt)

    def add(self, index, text, finished):
        if index == self.current:
            self.write(text)
        else:
            self.held[index] += text
        self.done[index] = finished
        while self.current < len(self.done) and self.done[self.current]:
            self.write("\n" + SEPARATOR + "\n")
            self.current += 1
            if self.current < len(self.done):
                self.write(self.prompt + self.held[self.current])


def sample(cfg: SampleConfig, write=write_stdout):
    """Draw cfg.num_samples samples, passing the text to write() as it is generated (pieces, newlines
    included); returns the samples, each prompt plus continuation, as a list of strings."""
    validate_sample_config(cfg)
    device, device_type, dtype = runtime.set_up(cfg.device, cfg.dtype, cfg.seed, cfg.threads)
    prompt = read_prompt(cfg.start)
    model, tokenizer = load_model(cfg.init_from, cfg.out_dir, device, cfg.checkpoint)
    model.eval().to(device)
    if runtime.resolve_compile(cfg.compile, device_type):
        model = torch.compile(model)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise UserError("the prompt is empty: give at least one character with --start")
    if max(ids) >= model.config.vocab_size:
        raise UserError(
            f"the prompt has token id {max(ids)}, beyond the model's vocabulary of {model.config.vocab_size}"
        )
    if cfg.window_shift > model.config.block_size:
        raise UserError(f"window_shift must be at most the block size, {model.config.block_size}")
    texts = [""] * cfg.num_samples
    printer = OrderedPrinter(cfg.num_samples, prompt, write)
    # on a terminal the streaming text shows how far sampling is; written to a file, a bar on stderr does
    progress = tqdm(total=cfg.max_new_tokens, desc="sampling", unit="tok", leave=False,
                    disable=sys.stdout.isatty() or not sys.stderr.isatty())
    events = complete(model, tokenizer, ids, cfg.max_new_tokens, num_samples=cfg.num_samples,
                      temperature=cfg.temperature, top_k=cfg.top_k or None, top_p=cfg.top_p,
                      stop=[cfg.stop] if cfg.stop else [], seed=cfg.seed, kv_cache=cfg.kv_cache,
                      window_shift=cfg.window_shift, on_step=progress.update)
    with progress, runtime.autocast(device_type, dtype):
        for index, text, finish_reason in events:
            texts[index] += text
            printer.add(index, text, finish_reason is not None)
    return [prompt + text for text in texts]
