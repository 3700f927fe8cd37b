"""Runs `latentbeam ARGS` and announces every step that changes the output directory.

Used by test_crash.py: each step (a rename, an atomic write, a deletion) prints
`STEP n name` before it happens; with CRASH_STEP=n the process then waits, so the test
can kill -9 it exactly there. Without CRASH_STEP it runs through.
"""
import os
import sys
import time


def main() -> int:
    from apache_beam.io.filesystems import FileSystems

    from latentbeam import outputs
    from latentbeam.cli import main as cli_main

    stop_at = int(os.environ.get("CRASH_STEP", "0"))
    count = {"n": 0}

    def announce(name, fn):
        def wrapped(*args, **kwargs):
            count["n"] += 1
            print(f"STEP {count['n']} {name}", flush=True)
            if count["n"] == stop_at:
                time.sleep(120)  # killed here
            return fn(*args, **kwargs)
        return wrapped

    outputs.write_atomically = announce("write", outputs.write_atomically)
    outputs.delete_files = announce("delete", outputs.delete_files)
    outputs.remove_tree = announce("remove_staging", outputs.remove_tree)
    FileSystems.rename = staticmethod(announce("rename", FileSystems.rename))
    rc = cli_main(sys.argv[1:])
    print(f"EXIT {rc}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
