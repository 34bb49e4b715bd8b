"""``python -m packager`` runs the dcmpack command line."""
from .cli import main

if __name__ == "__main__":
    main()
