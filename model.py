"""nanoGPT's `from model import GPT, GPTConfig` from the repository root: the model itself is nanogpt/model.py."""

from nanogpt.model import GPT, GPTConfig  # noqa: F401
