"""Entry point of the standalone `mirror` executable (PyInstaller)."""

import sys

from mirror.cli import main

if __name__ == "__main__":
    sys.exit(main())
