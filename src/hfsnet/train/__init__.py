"""Training, evaluation and checkpoints."""

from hfsnet.train.config import RECIPES, ConfigError, TrainConfig, resolve_config
from hfsnet.train.loop import Trainer, TrainResult, train

__all__ = ["RECIPES", "ConfigError", "TrainConfig", "TrainResult", "Trainer", "resolve_config",
           "train"]
