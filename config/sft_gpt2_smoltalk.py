# Chat-finetune OpenAI's GPT-2 124M on smol-smoltalk (needs the network and pip install -e '.[hf]'); about 131M
# tokens, an estimated ~15 minutes on one A100 (docs/guides/chat.md). Prepare the conversations first:
#   nanogpt prepare --input=HuggingFaceTB/smol-smoltalk --format=chat --tokenizer=gpt2 --name=smoltalk

out_dir = 'out-gpt2-chat'
dataset = 'smoltalk'
init_from = 'gpt2'  # its 50,257 rows grow by the 4 turn tokens (to 50,304, a multiple of 64)
document_aligned = True  # every row starts at a conversation
eval_interval = 250
eval_iters = 20
eval_train = False

block_size = 1024
batch_size = 8
gradient_accumulation_steps = 8  # 8 x 8 x 1,024 = 65,536 tokens per step
max_iters = 2000

# finetune at a constant, small learning rate, as config/finetune_shakespeare.py does
learning_rate = 3e-5
decay_lr = False
