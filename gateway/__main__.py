"""`python -m gateway` is the `gateway` command."""

import sys

from gateway.cli import main

# Guarded, so that importing the module (multiprocessing's spawn and forkserver do) does not run the command.
if __name__ == "__main__":
    sys.exit(main())
