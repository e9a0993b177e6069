"""`ModelWrapper`: a module that *is* the model it wraps, state-wise."""

from __future__ import annotations

import torch


class ModelWrapper(torch.nn.Module):
    """Shares the model's submodules, parameters and buffers (the same dictionaries, so the same
    objects and `state_dict()` keys, and `.to()` moves both) and its train/eval mode. Subclasses
    change only how forward runs."""

    def __init__(self, model: torch.nn.Module):
        object.__setattr__(self, "_model", model)  # before Module.__init__ sets `training`
        mode = model.training
        super().__init__()
        model.training = mode
        self._modules = model._modules
        self._parameters = model._parameters
        self._buffers = model._buffers
        self._non_persistent_buffers_set = model._non_persistent_buffers_set
        self._version = type(model)._version

    # The mode is the model's own flag, not a copy: `model.eval()` on the original switches the
    # wrapper too, and `wrapper.train()` the original.
    @property
    def training(self) -> bool:
        return self._model.training

    @training.setter
    def training(self, mode: bool) -> None:
        self._model.training = mode

    def train(self, mode: bool = True):
        self._model.train(mode)
        return self
