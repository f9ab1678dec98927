# Finetune pretrained GPT-2 XL on BPE-tokenized Shakespeare (python data/shakespeare/prepare.py first).

import time

out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False
wandb_project = 'shakespeare'
wandb_run_name = 'ft-' + str(time.time())  # a new W&B run name each time

dataset = 'shakespeare'
init_from = 'gpt2-xl'  # the largest GPT-2 model

# only save checkpoints if the validation loss improves
always_save_checkpoint = False

# 1 batch_size * 32 grad_accum * 1024 tokens = 32,768 tokens per iteration;
# shakespeare has 301,966 tokens, so 1 epoch is ~9.2 iterations
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# finetune at a constant, small learning rate
learning_rate = 3e-5
decay_lr = False
