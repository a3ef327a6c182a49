"""Training: TrainConfig, the Trainer (AdamW, warmup + cosine, accumulation, bf16, DDP), checkpoints."""
from craft.training.checkpoint import (
    CHECKPOINT_KEYS, latest_checkpoint, list_checkpoints, load_checkpoint, load_model, save_checkpoint,
)
from craft.training.config import TrainConfig
from craft.training.trainer import SampleGeneration, Trainer, warmup_cosine

__all__ = ["TrainConfig", "Trainer", "SampleGeneration", "warmup_cosine", "CHECKPOINT_KEYS", "latest_checkpoint",
           "list_checkpoints", "load_checkpoint", "load_model", "save_checkpoint"]
