"""The old entry point: `python benchmarks/claims.py PAPER` runs the package benchmarks/claims/."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from claims import main  # noqa: E402  (the folder benchmarks/claims/ is found before this file)

if __name__ == "__main__":
    main()
