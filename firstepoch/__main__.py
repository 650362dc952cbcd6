"""`python -m firstepoch ...` (and `torchrun -m firstepoch ...`) runs the command line."""
from firstepoch.cli import main

if __name__ == "__main__":
    main()
