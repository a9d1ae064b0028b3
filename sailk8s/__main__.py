"""`python -m sailk8s`."""

from sailk8s.cli import main

if __name__ == "__main__":
    main()
