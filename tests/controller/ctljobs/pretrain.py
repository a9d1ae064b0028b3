import sys

from ctljobs.worker import main

if __name__ == "__main__":
    sys.exit(main())
