"""``python -m packager`` runs the dcmpack command line."""

from packager.cli import main

if __name__ == "__main__":
    main()
