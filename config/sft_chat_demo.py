# The offline chat demo, step 2: finetune the pretrained run on the synthetic conversations (masked loss: only the
# assistant's tokens count). Give the pretrained run with --init_from=RUN_FOLDER.
#   nanogpt prepare --input=synthetic --format=chat --tokenizer_from=data/chat_demo_base --name=chat_demo

out_dir = 'out-chat-demo'
dataset = 'chat_demo'
init_from = 'out-chat-demo-base'  # the pretrained run: a new run starts from its weights
document_aligned = True  # every row starts at a conversation
eval_interval = 200
eval_iters = 10
eval_train = False
log_interval = 25

gradient_accumulation_steps = 1
batch_size = 16
block_size = 64

learning_rate = 2e-3
max_iters = 600
lr_decay_iters = 600
min_lr = 2e-4
beta2 = 0.99
warmup_iters = 20

device = 'cpu'
compile = False
