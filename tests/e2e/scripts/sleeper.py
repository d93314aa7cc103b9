"""Writes its pid to OUT_DIR/pid-<rank> and sleeps (for the Ctrl-C test)."""

import os
import sys
import time

from surge import PartialState

state = PartialState()
with open(os.path.join(sys.argv[1], f"pid-{state.process_index}"), "w") as f:
    f.write(str(os.getpid()))
time.sleep(120)
