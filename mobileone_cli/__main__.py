"""``python -m mobileone_cli`` is the ``mobileone`` command."""
from .cli import main

if __name__ == "__main__":
    main()
