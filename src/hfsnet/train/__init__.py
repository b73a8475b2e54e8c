"""Training, evaluation and checkpoints."""

from hfsnet.train.config import RECIPES, ConfigError, TrainConfig, resolve_config
from hfsnet.train.loop import Trainer, TrainingInterrupted, TrainResult
from hfsnet.train.run import resume, train

__all__ = ["RECIPES", "ConfigError", "TrainConfig", "TrainResult", "Trainer",
           "TrainingInterrupted", "resolve_config", "resume", "train"]
