"""Hypothesis runs derandomized, so CI and every machine check the same cases; explore new
ones with `pytest --hypothesis-profile=explore`."""

from hypothesis import settings

settings.register_profile("deterministic", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=200)
settings.load_profile("deterministic")


import os  # noqa: E402
import tempfile  # noqa: E402

from fxckpt.core.timing import DeviceRates  # noqa: E402

# Plans made with timing="estimate" depend on the device's measured rates: tests pin them (and
# keep the rates cache out of the user's home), so every machine checks the same plans.
PINNED_RATES = DeviceRates("pinned for tests", flops_per_second=5e10, bytes_per_second=1e10,
                           op_overhead_seconds=5e-6, node_overhead_seconds=3e-5)
os.environ.setdefault("FXCKPT_CACHE_DIR", tempfile.mkdtemp(prefix="fxckpt-test-cache-"))
try:
    import torch
except ImportError:  # the torch-free core's tests
    torch = None
if torch is not None:
    from fxckpt.calibrate import set_device_rates

    for _dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        set_device_rates(PINNED_RATES, "cpu", _dtype)
