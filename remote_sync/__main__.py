"""``python -m remote_sync``: the command line, as the ``remote-sync`` script runs it."""

from .cli import entry

if __name__ == "__main__":
    entry()
