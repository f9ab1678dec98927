# GPT-2 (124M) on OpenWebText, reaching a loss of about 2.85 in ~5 days on one node of 8 A100 40GB GPUs:
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
# (set wandb_log = True to follow it on Weights & Biases; needs `pip install wandb`)

wandb_log = False
wandb_project = 'owt'
wandb_run_name = 'gpt2-124M'

# 12 batch size * 1024 block size * 5 grad accum * 8 GPUs = 491,520 tokens per iteration
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

# 600,000 iterations is about 300B tokens
max_iters = 600000
lr_decay_iters = 600000

eval_interval = 1000
eval_iters = 200
log_interval = 10

weight_decay = 1e-1
