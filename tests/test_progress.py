"""Progress bars: sampling counts its generated steps for its bar (shown on stderr when the samples go to a file)."""

import torch

from nanogpt.generate import complete
from nanogpt.model import GPT, GPTConfig
from nanogpt.tokenizers import CharTokenizer


def test_complete_reports_each_generated_step():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=4)).eval()
    steps = []
    events = list(complete(model, CharTokenizer("abcd"), [0], 20, num_samples=3, seed=1,
                           on_step=lambda: steps.append(1)))
    assert len(steps) == 20  # one per token of the batch, not per sample
    assert sum(1 for _, _, reason in events if reason == "length") == 3
