"""Feed the catalogue of bad inputs (tests/bad_inputs.py) through the library, nodes and CLI and count the outcomes.

    PYTHONPATH=.:tests OMP_NUM_THREADS=1 python scripts/bad_input_figures.py [--list]

clear: HSpaceError, one line, naming the problem; unclear: HSpaceError that does not name it; raw: any other
exception; silent: the bad input was accepted. Run it against another checkout (PYTHONPATH=<checkout>:tests) to
compare.
"""
from __future__ import annotations

import collections
import logging
import signal
import sys
import warnings

from bad_inputs import CASES, StartedWork, outcome

SECONDS = 30  # a case still running after this accepted its bad input and started long work


def _started_work(signum, frame):
    raise StartedWork


def main() -> int:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    signal.signal(signal.SIGALRM, _started_work)
    counts: collections.Counter[str] = collections.Counter()
    for name, call, pattern in CASES:
        signal.alarm(SECONDS)
        kind, message = outcome(call, pattern)
        signal.alarm(0)
        counts[kind] += 1
        if kind != "clear" or "--list" in sys.argv:
            print(f"{kind:8s} {name}: {message[:160]}")
    print(f"cases tried: {len(CASES)}; clear: {counts['clear']}, unclear: {counts['unclear']}, raw: {counts['raw']}, "
          f"silent: {counts['silent']}")
    return 0 if counts["clear"] == len(CASES) else 1


if __name__ == "__main__":
    sys.exit(main())
