"""Loading a model to use it: a trained run's checkpoint, or pretrained GPT-2 weights, with the tokenizer that reads
and writes its token ids. sample, serve and export start here; training loads its checkpoint itself (it needs the
optimizer state too, see train.py)."""

from pathlib import Path

from nanogpt import checkpoint, hf
from nanogpt.bpe import gpt2_meta
from nanogpt.data import read_meta
from nanogpt.errors import UserError
from nanogpt.model import GPT
from nanogpt.tokenizers import tokenizer_from_meta

CHECKPOINTS = ("auto", "best", "last")


def check_checkpoint_choice(which):
    if which not in CHECKPOINTS:
        raise UserError(f"unknown checkpoint '{which}': use best, last or auto (what nanoGPT would have kept)")


def load_run(out_dir, device="cpu", which="auto"):
    """The model and tokenizer of a trained run, weights only (the optimizer state is never read). which: 'last'
    (ckpt.pt), 'best' (best.pt) or 'auto', the one nanoGPT would have kept: best.pt for a run trained with
    always_save_checkpoint=False, ckpt.pt otherwise."""
    check_checkpoint_choice(which)
    ckpt = checkpoint.load_checkpoint(out_dir, "latest" if which == "last" else which, map_location=device)
    model = checkpoint.load_model(ckpt, out_dir)
    meta = ckpt.get("tokenizer") or legacy_tokenizer_meta(ckpt)
    return model, tokenizer_from_meta(meta)


def load_model(init_from, out_dir, device="cpu", which="auto"):
    """init_from='resume': the run in out_dir; anything else (nanoGPT's init_from='gpt2-xl'): pretrained Hugging
    Face weights with their folder's own tokenizer (an exported run's), else GPT-2's."""
    if init_from == "resume":
        return load_run(out_dir, device, which)
    model = GPT.from_pretrained(init_from, {"dropout": 0.0})
    return model, tokenizer_from_meta(pretrained_tokenizer_meta(init_from))


def pretrained_tokenizer_meta(init_from):
    """A local model folder's own tokenizer, else GPT-2's BPE (hub names: GPT-2 and its finetunes); a folder
    exported from a chat-finetuned run keeps its chat template (see conversation.py)."""
    folder = Path(init_from).expanduser()
    meta = (hf.read_tokenizer(folder) if folder.is_dir() else None) or gpt2_meta()
    from nanogpt.conversation import exported_chat_meta

    return exported_chat_meta(folder, meta) if folder.is_dir() else meta


def legacy_tokenizer_meta(ckpt):
    """For upstream nanoGPT checkpoints, which keep no tokenizer: its dataset's meta.pkl, else GPT-2 BPE."""
    dataset = (ckpt.get("config") or {}).get("dataset")
    if dataset and Path("data", dataset).is_dir():
        return read_meta(Path("data", dataset))
    return gpt2_meta()
