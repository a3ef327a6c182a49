"""Run by tests/test_ddp.py under ``torchrun --nproc_per_node 2``: a few DDP steps of a small model
on CPU (gloo), then each rank saves its parameters to ``OUT/rank{r}.pt``."""
import sys

import torch

from craft.training import TrainConfig, Trainer
from tests._training_helpers import SMALL_MODEL

corpus, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
cfg = TrainConfig(model_overrides=SMALL_MODEL, tokens_per_step=256, micro_batch_tokens=64, warmup_steps=1,
                  max_steps=3, log_every=1, eval_every=0, sample_every=3, sample_tokens=4, checkpoint_every=2,
                  precision="fp32", tensorboard=False, progress=False, device="cpu")
trainer = Trainer(cfg, corpus, out)
assert trainer.world_size == 2 and (trainer.micro_batch, trainer.accum_steps) == (2, 2)
summary = trainer.train()
torch.save({"rank": trainer.rank, "state": trainer.model.state_dict(), "losses": [
    h["loss"] for h in trainer.history if h["event"] == "train"]}, f"{out}/rank{trainer.rank}.pt")
