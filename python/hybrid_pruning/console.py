"""A quiet console: only our progress bar, summary and errors by default.

TensorFlow, the converter and the LiteRT interpreter write straight to file descriptor 2
from C++ (some before any log level applies), so a log level alone cannot silence them. The
apps therefore move Python's sys.stderr to a duplicate of the terminal and point fd 2 at
/dev/null: our output (tqdm, absl errors, tracebacks, exit messages) still reaches the user,
the libraries' does not.
"""

from __future__ import annotations

import os
import sys
import warnings


def quiet_libraries() -> None:
    """Call before TensorFlow is first imported."""
    from absl import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore")
    logging.set_verbosity(logging.ERROR)
    sys.stderr.flush()
    terminal = os.dup(2)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, closefd=False)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    # absl's handler captured the old stream object at import: point it at the new one.
    logging.get_absl_handler().python_handler.stream = sys.stderr
