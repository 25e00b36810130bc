"""``python -m edgecompile``: the command line, as the ``edgecompile`` console script runs it."""

from edgecompile.cli import main

if __name__ == "__main__":
    main()
