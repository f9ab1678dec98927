# The fast CPU quick start with only switches a standard Hugging Face architecture holds: `nanogpt export` writes
# its runs as Qwen3, which transformers loads without remote code. Measured beside the fast preset by
# benchmarks/export_preset.py; why these switches, in docs/code-analysis/hf-interop.md.

out_dir = 'out-shakespeare-char-export'
eval_interval = 50
eval_iters = 10
log_interval = 10
always_save_checkpoint = False

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 24
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False

# config/train_shakespeare_char_cpu_fast.py's switches, less the three no standard architecture holds beside QK-norm:
# RMSNorm instead of its bias-free LayerNorm (Qwen3 normalises blocks and heads with RMSNorm), no logit soft-cap and
# no embedding norm (embed_norm)
position = 'rope'
norm = 'rmsnorm'
qk_norm = True
activation = 'relu2'
tie_embeddings = False
zero_init_proj = True
logit_softcap = 0.0

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

# the rates above were tuned (for the fast preset) at this shape; at another width, batch or length the
# learning-rate rule scales them (docs/concepts/modern-recipe.md), so --n_embd, --batch_size or --max_iters need no
# retuning
lr_rule = 'transfer'
lr_ref_width = 128
lr_ref_batch_tokens = 1536  # 24 x 64
lr_ref_iters = 650
