"""Console-script entry points of the argparse command lines (krause-sweep, krause-reproduce)."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run(main: Callable[[], int]) -> None:
    """Runs `main()` and exits with its status; bad input (ValueError, FileNotFoundError) prints
    its message instead of a traceback."""
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")


def sweep() -> None:
    from krause.sweep import main

    run(main)


def reproduce() -> None:
    from krause.reproduce import main

    run(main)
