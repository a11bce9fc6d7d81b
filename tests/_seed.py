"""One random seed per test run (fresh inputs every run, as the kernels' tests require), shown
in pytest's header and replayable with ONEREC_TEST_SEED=<seed>."""
import os

import torch

RUN_SEED = int(os.environ.get("ONEREC_TEST_SEED") or int.from_bytes(os.urandom(4), "little") % 2**31)


def run_gen(offset: int = 0) -> torch.Generator:
    """A CPU generator seeded from this run's seed (offset keeps tests' streams apart)."""
    return torch.Generator().manual_seed(RUN_SEED + offset)
