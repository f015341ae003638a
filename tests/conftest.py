import os
import sys
from pathlib import Path

import torch
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)
# The default run is deterministic (the same examples every run, so a CI run cannot fail on a
# fresh random draw); `HYPOTHESIS_PROFILE=explore make test` draws new examples, more of them.
settings.register_profile("default", deadline=None, max_examples=60, derandomize=True)
settings.register_profile("explore", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
