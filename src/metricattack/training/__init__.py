"""Training re-ID models: config, losses, P×K sampler and the resumable trainer."""

from .config import TrainConfig, load_train_config
from .trainer import train

__all__ = ["TrainConfig", "load_train_config", "train"]
