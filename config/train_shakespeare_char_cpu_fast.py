# The quick start, the modern way: nanoGPT's CPU quick-start model (4 layers of 128, block 64) with the modern
# recipe's switches and Muon, in about the wall time nanoGPT's README CPU command takes on a 2-core CPU.
# Measured against it by benchmarks/recipe.py; shapes and settings chosen by the measurements in
# docs/concepts/modern-recipe.md.

out_dir = 'out-shakespeare-char-fast'
eval_interval = 50  # frequent evaluations show the curve; 10 batches of 24 read as many val tokens as 20 of 12
eval_iters = 10
log_interval = 10
always_save_checkpoint = False

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 24  # twice nanoGPT's: Muon's fixed cost per step is shared by more tokens, and it learns faster per second
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False

position = 'rope'
norm = 'layernorm'  # bias-free; F.rms_norm is ~3x slower than F.layer_norm on CPUs
qk_norm = True
activation = 'relu2'
tie_embeddings = False
zero_init_proj = True
logit_softcap = 15.0
embed_norm = True  # the embedding normalised before the first block

optimizer = 'muon'
muon_orthogonalizer = 'polar_express'  # each Newton-Schulz iteration its own best quintic
muon_neuron_norm = True  # NorMuon: every output neuron's step evened out
muon_lr = 0.02
learning_rate = 3e-3  # AdamW, for the head and gains
embedding_lr = 0.01  # AdamW, for the token embedding
min_lr = 3e-4
beta2 = 0.99
max_iters = 850  # about upstream's run time on a 2-core CPU with bfloat16; in float32, 650 is
lr_decay_iters = 850
warmup_iters = 50

device = 'cpu'
dtype = 'native'  # bfloat16 where the CPU computes it (AVX512-BF16, AMX): ~20% faster a step; else float32
compile = False

# the rates above were tuned at this shape; at another width, batch or length the learning-rate rule scales them
# (docs/concepts/modern-recipe.md), so --n_embd, --batch_size or --max_iters need no retuning
lr_rule = 'transfer'
lr_ref_width = 128
lr_ref_batch_tokens = 1536  # 24 x 64
lr_ref_iters = 650
