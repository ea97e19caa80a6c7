import os

import torch

# under pytest-xdist every worker gets one thread, so two workers use the two cores without contention
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
