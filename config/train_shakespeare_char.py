# A baby GPT on character-level Shakespeare; about 3 minutes on one A100 (nanoGPT's preset, same values).
# On a laptop CPU use config/train_shakespeare_char_cpu.py instead.

out_dir = 'out-shakespeare-char'
eval_interval = 250  # the model overfits this small data, so check often
eval_iters = 200
log_interval = 10  # printing every iteration costs time

# only save when val improves: the model overfits, and the best checkpoint is the one to keep
always_save_checkpoint = False

wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # context of up to 256 previous characters

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3  # a baby network can take a large learning rate
max_iters = 5000
lr_decay_iters = 5000  # usually equal to max_iters
min_lr = 1e-4  # learning_rate / 10
beta2 = 0.99  # a little larger than usual: few tokens per iteration

warmup_iters = 100  # not super necessary
