"""Imported by the DataLoader workers' fork server as it starts (`workers.py`), and by nothing else:
importing it makes the importing process ignore the preemption signals."""
import os
import signal

from t2v_dist.data.workers import PREEMPTION_SIGNALS, TOKENIZER_ENV

# They also stay blocked, as the server was started: a worker forked from here inherits the mask, and torch's
# worker set-up installs its own SIGTERM handler (which exits) before our worker_init_fn ignores them again.
for sig in PREEMPTION_SIGNALS:
    signal.signal(sig, signal.SIG_IGN)

import t2v_dist.data.pipeline  # noqa: E402,F401  torch, numpy, the decoders: imported once, not per worker
from t2v_dist.tokenizer import load_tokenizer  # noqa: E402

load_tokenizer(os.environ.get(TOKENIZER_ENV) or None)  # cached: the workers forked from here inherit it
