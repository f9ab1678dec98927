# GPT-2 (124M) with the modern recipe, for one GPU node (the modded-nanogpt recipe at nanoGPT's scale):
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_fast.py
# Same data and tokens per step as config/train_gpt2.py; rotary positions, QK-norm, ReLU², an untied head,
# zero-initialised projections, logit soft-capping and Muon for the hidden matrices.
# Not yet measured on GPUs by this project: the step counts and learning rates are starting points taken from the
# modded-nanogpt speedruns' published settings (which reach GPT-2's 3.28 FineWeb val loss in under 1B tokens),
# not tuned here. benchmarks/recipe.py measures the CPU preset; run both GPT-2 configs side by side to compare.

wandb_log = False
wandb_project = 'owt'
wandb_run_name = 'gpt2-124M-fast'

dataset = 'openwebtext'
# 12 batch size * 1024 block size * 5 grad accum * 8 GPUs = 491,520 tokens per iteration
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

n_layer = 12
n_head = 12
n_embd = 768
bias = False

position = 'rope'
norm = 'rmsnorm'  # fused on GPUs (only CPUs run F.rms_norm slower than LayerNorm)
qk_norm = True
activation = 'relu2'
tie_embeddings = False
zero_init_proj = True
logit_softcap = 30.0  # modded-nanogpt's value for 124M

optimizer = 'muon'
muon_lr = 0.02
muon_momentum = 0.95
learning_rate = 3e-3  # AdamW, for the embeddings, head and gains only
min_lr = 0.0
weight_decay = 0.0
beta1 = 0.8
beta2 = 0.95

# 5,000 steps of 491,520 tokens: ~2.5B tokens. Warmup, hold the peak, then decay over the last 40%
max_iters = 5000
lr_decay_iters = 5000
warmup_iters = 100
lr_schedule = 'wsd'
wsd_decay_frac = 0.4

eval_interval = 250
eval_iters = 200
log_interval = 10
