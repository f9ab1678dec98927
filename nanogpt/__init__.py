"""nanogpt: train, finetune, sample and serve GPT models, in a few readable files."""

__version__ = "0.1.0"
