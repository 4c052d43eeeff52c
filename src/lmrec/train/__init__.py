"""Training: the one Trainer (a model hands it a Task), its seams, and standalone loss functions."""

from lmrec.train.loop import EarlyStopping, fit_epochs, minibatches
from lmrec.train.trainer import Strategy, Task, TrainConfig, Trainer, TrainerOptions

__all__ = ["EarlyStopping", "Strategy", "Task", "TrainConfig", "Trainer", "TrainerOptions", "fit_epochs", "minibatches"]
