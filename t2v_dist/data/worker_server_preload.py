"""Imported by the DataLoader workers' fork server as it starts (`workers.py`), and by nothing else:
the importing process then dies with its parent, ignores the preemption signals, and holds the pipeline's
modules and the tokenizer for the workers it forks."""
import ctypes
import os
import signal
import sys

from t2v_dist.data.workers import PARENT_ENV, PREEMPTION_SIGNALS, TOKENIZER_ENV

PR_SET_PDEATHSIG = 1  # linux/prctl.h
if sys.platform.startswith("linux"):
    # Die with the training process (see workers.py); if it is already gone, exit now.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if str(os.getppid()) != os.environ.get(PARENT_ENV):
        os._exit(0)

# They also stay blocked, as the server was started: a worker forked from here inherits the mask, and torch's
# worker set-up installs its own SIGTERM handler (which exits) before our worker_init_fn ignores them again.
for sig in PREEMPTION_SIGNALS:
    signal.signal(sig, signal.SIG_IGN)

import t2v_dist.data.pipeline  # noqa: E402,F401  torch, numpy, the decoders: imported once, not per worker
from t2v_dist.tokenizer import load_tokenizer  # noqa: E402

load_tokenizer(os.environ.get(TOKENIZER_ENV) or None)  # cached: the workers forked from here inherit it
