"""`spot demo`: the SPoT workflow end to end on a small T5, on CPU, in minutes.

    spot demo --quick            # under two minutes on two CPU cores
    spot demo --out DIR --seed 1 # the default preset, about five minutes

See docs/demo.md. `main(argv) -> int` is the command's entry point.
"""

from spot.demo.cli import main

__all__ = ["main"]
