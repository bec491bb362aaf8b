"""``python -m signaling.bench``: see :mod:`signaling.bench.cli`."""

import sys

from signaling.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
