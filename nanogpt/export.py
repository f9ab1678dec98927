"""`nanogpt export`: a run's checkpoint (or pretrained weights) written as a Hugging Face folder (see hf.py)."""

from dataclasses import asdict, dataclass

from nanogpt import hf
from nanogpt.errors import UserError
from nanogpt.runs import check_checkpoint_choice, load_model


@dataclass
class ExportConfig:
    init_from: str = "resume"  # 'resume' exports the run in out_dir; or a GPT-2 name, hub name or local folder
    out_dir: str = "out"  # the run to export
    checkpoint: str = "auto"  # 'best' (best.pt), 'last' (ckpt.pt) or 'auto': what nanoGPT would have kept
    to: str = ""  # the folder to write (must not exist, or be empty)

    def to_dict(self):
        return asdict(self)


def export_run(cfg: ExportConfig, log=print):
    """Load the run (or pretrained weights) cfg names on the CPU and write it as a Hugging Face folder."""
    if not cfg.to:
        raise UserError("say where to export with --to=DIR")
    check_checkpoint_choice(cfg.checkpoint)
    model, tokenizer = load_model(cfg.init_from, cfg.out_dir, "cpu", cfg.checkpoint)
    # pretrained weights of a smaller vocabulary than GPT-2's came with some other tokenizer, not known here
    meta = tokenizer.describe() if tokenizer.vocab_size <= model.config.vocab_size else None
    return hf.export(model, cfg.to, meta, log, finish=lambda folder: chat_files(folder, tokenizer))


def chat_files(folder, tokenizer):
    """A chat-finetuned run's chat template and end-of-turn token (nothing for a base run): see conversation.py."""
    from nanogpt.conversation import hf_chat_files

    hf_chat_files(folder, tokenizer)
