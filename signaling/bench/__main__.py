"""``python -m signaling.bench``: see :mod:`signaling.bench.cli`."""

import sys


def _main() -> int:
    try:
        from signaling.bench.cli import main
    except ImportError as e:
        if e.name in ("picows", "uvloop"):
            print(
                f"signaling.bench needs the 'bench' extra ({e.name} is missing): "
                "pip install 'signaling[bench]' (or, in a checkout, pip install '.[bench]')",
                file=sys.stderr,
            )
            return 2
        raise
    return main()


if __name__ == "__main__":
    sys.exit(_main())
