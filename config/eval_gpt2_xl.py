# Evaluate the pretrained OpenAI GPT-2 1558M (gpt2-xl) on the dataset's train and val splits, then exit.
batch_size = 8
eval_iters = 500  # use more iterations to get a good estimate
eval_only = True
wandb_log = False
init_from = 'gpt2-xl'
