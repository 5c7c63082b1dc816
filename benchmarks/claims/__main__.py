"""`python benchmarks/claims PAPER` (or `python -m claims PAPER` from benchmarks/)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# run as a folder, Python puts the folder itself first on sys.path, where its modules would
# shadow the project's scripts: put benchmarks/ there instead, so `claims` is a package
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.dirname(HERE))

from claims import main  # noqa: E402

main()
