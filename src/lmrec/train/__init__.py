"""Training: the epoch loop with early stopping, and standalone loss functions."""

from lmrec.train.loop import EarlyStopping, fit_epochs, minibatches

__all__ = ["EarlyStopping", "fit_epochs", "minibatches"]
