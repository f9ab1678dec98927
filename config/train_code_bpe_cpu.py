# Your own text or code on a CPU, the modern way: 4 layers of 256 over 512-token sequences for a BPE dataset.
# Make the dataset with `nanogpt prepare --input=FOLDER --name=NAME --pattern='*.py' --tokenizer=bpe
# --vocab_size=4096`, then run `python train.py config/train_code_bpe_cpu.py --dataset=NAME`. 4096 tokens a step,
# the fast CPU preset's switches and optimizer; benchmarks/peer.py trains it against nanochat at equal wall time
# (docs/concepts/modern-recipe.md). Change max_iters and lr_decay_iters together to fit your time.

out_dir = 'out-code-bpe'
eval_interval = 100
eval_iters = 16  # 16 batches of 8 x 512: 65536 val tokens
eval_train = False
log_interval = 10
always_save_checkpoint = False

gradient_accumulation_steps = 1
batch_size = 8
block_size = 512

n_layer = 4
n_head = 4
n_embd = 256
dropout = 0.0
bias = False

position = 'rope'
norm = 'layernorm'  # bias-free; F.rms_norm is slower than F.layer_norm on CPUs
qk_norm = True
activation = 'relu2'
tie_embeddings = False
zero_init_proj = True
logit_softcap = 15.0
x0_mix = True  # every block sees a learned share of the embedding output
value_embeddings = True  # each token's identity handed to every other layer; measured in docs/concepts/modern-recipe.md
embed_norm = True  # the blocks see the token embedding normalised, whatever its scale (its rate is high)

optimizer = 'muon'
muon_lr = 0.02
learning_rate = 3e-3  # AdamW, for the head and gains
embedding_lr = 0.03  # AdamW, for the token and value embeddings: a row moves only when its token appears
scalar_lr = 0.02  # AdamW, for the x0 shares: single numbers that must move within a short run
min_lr = 1.5e-4  # 5% of each peak at the end (Muon's floor scales with its own peak)
lr_schedule = 'wsd'  # hold the peak, then a long linear decay over the last 65% (nanochat's warm-down)
wsd_decay_frac = 0.65
beta2 = 0.99
max_iters = 400
lr_decay_iters = 400
warmup_iters = 40

device = 'cpu'
compile = False
