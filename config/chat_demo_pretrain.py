# The offline chat demo, step 1: pretrain a small model briefly on text whose BPE reserves the chat turn tokens
# (benchmarks/chat_sft.py runs the whole demo; docs/guides/chat.md explains it). About two minutes on a laptop CPU.
#   nanogpt prepare --input=corpus.txt --name=chat_demo_base --tokenizer=bpe --vocab_size=512 --turn_tokens=True

out_dir = 'out-chat-demo-base'
dataset = 'chat_demo_base'
eval_interval = 200
eval_iters = 10
log_interval = 25

gradient_accumulation_steps = 1
batch_size = 16
block_size = 64

n_layer = 2
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 2e-3
max_iters = 200
lr_decay_iters = 200
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 30

device = 'cpu'
compile = False
