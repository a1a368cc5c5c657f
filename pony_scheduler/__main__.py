"""`python -m pony_scheduler` behaves exactly like `pb`."""

from pony_scheduler.cli import main

if __name__ == "__main__":
    main(prog_name="pb")
