"""Planning that fails raises a typed error and prints nothing of torch's own: no pages of
"E... fake_tensor.py] failed while attempting to run meta" log lines (issue 10 item 12)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import fxckpt
from fxckpt import StageError


def _plan_a_wrong_shape():
    model, wrong = nn.Sequential(nn.Linear(8, 8), nn.ReLU()), torch.randn(4, 5)  # 5 features, not 8
    with pytest.raises(StageError) as e:
        fxckpt.auto_checkpoint(model, wrong, budget=0.5)
    assert e.value.stage == "annotate" and "must have same reduction dim" in str(e.value)


def test_a_failing_plan_logs_nothing_of_torch(capfd, caplog):
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG):
        _plan_a_wrong_shape()
    torch_records = [r for r in caplog.records if r.name.startswith("torch") and r.levelno >= logging.WARNING]
    assert not torch_records, [r.getMessage() for r in torch_records]
    err = capfd.readouterr().err
    assert "fake_tensor" not in err and "Traceback" not in err, err[:2000]
    assert logging.getLogger("torch").level != logging.CRITICAL  # put back


def test_a_failing_plan_prints_nothing_of_torch_on_stderr():
    """In a fresh process, where torch's log handler writes to the real stderr."""
    code = ("import torch, fxckpt\n"
            "try:\n"
            "    fxckpt.auto_checkpoint(torch.nn.Linear(8, 8), torch.randn(4, 5), budget=0.5)\n"
            "except fxckpt.StageError as e:\n"
            "    print(e.stage)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.stdout.strip() == "annotate", run.stdout + run.stderr[-2000:]
    assert "fake_tensor" not in run.stderr and "Traceback" not in run.stderr, run.stderr[:2000]


def test_an_output_with_nothing_to_backpropagate_says_so():
    """It was a StageError naming a FakeTensor and asking for an issue to be filed."""
    class Argmax(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.a(x).argmax(-1)

    with pytest.raises(fxckpt.LossError, match=r"nothing to backpropagate: the model's output \(int64 \(4,\) "
                                                 r"\(no grad\)\).*loss_fn=") as e:
        fxckpt.auto_checkpoint(Argmax(), torch.randn(4, 8), budget=0.5)
    assert isinstance(e.value, ValueError) and not isinstance(e.value, fxckpt.StageError)
