"""``python -m derivreg`` runs the command line."""

from derivreg.cli import main

if __name__ == "__main__":
    main()
