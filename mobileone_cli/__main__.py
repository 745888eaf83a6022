"""``python -m mobileone_cli`` is the ``mobileone`` command."""
from .cli import entry_point

if __name__ == "__main__":
    entry_point()
