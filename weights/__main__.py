"""``python -m weights [NAME ...]``: list every weight set with its source and local directory.

With ``SDXL_WEIGHTS=tiny`` the tiny sets are generated on demand; otherwise nothing is downloaded
unless ``--fetch`` is given.
"""

import argparse
import logging

from .sets import WEIGHT_SETS, flavour, is_tiny, local_dir, resolve, source


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m weights", description=__doc__)
    parser.add_argument("names", nargs="*", help="weight sets to show (default: all)")
    parser.add_argument("--fetch", action="store_true", help="download / generate missing sets now")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    unknown = [n for n in args.names if n not in WEIGHT_SETS]
    if unknown:
        parser.error(f"unknown weight set(s) {', '.join(unknown)}; known: {', '.join(WEIGHT_SETS)}")
    print(f"SDXL_WEIGHTS={flavour()}")
    for name in args.names or WEIGHT_SETS:
        path = resolve(name) if (args.fetch or is_tiny()) else local_dir(name)
        state = "present" if path.is_dir() else "not fetched yet"
        print(f"{name:15} {WEIGHT_SETS[name].description}\n{'':15} source: {source(name)}\n{'':15} local:  {path} ({state})")


if __name__ == "__main__":
    main()
