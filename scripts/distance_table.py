"""Print an expansion report's distances as one markdown table: every set against held-out real images,
FID and KID in each feature space the report measured (the guide's and the independent ones).

    python scripts/distance_table.py reports/digits_comparison/report.json
    python scripts/distance_table.py results/digits-shift-blur/comparison_report/report.json --reference train
"""

import argparse
import json
from pathlib import Path

from distdiff import cli
from distdiff.errors import UserError
from distdiff.report.build import distance_table


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", help="a report.json written by expand.py or scripts/report.py")
    parser.add_argument("--reference", default=None,
                        help="the real images compared with (default: the report's held-out split)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> str:
    with cli.user_errors("distance_table.py"):
        path = Path(args.report)
        if not path.is_file():
            raise UserError(f"{path} not found; write it with `python scripts/report.py OUT ...`.")
        report = json.loads(path.read_text())  # invalid JSON is a ValueError too
        if not isinstance(report, dict) or "distribution" not in report:
            raise UserError(f"{path} is not an expansion report's report.json (no 'distribution').")
        text = distance_table(report, reference=args.reference or report["real"]["heldout"]["split"])
    print(text)
    return text


if __name__ == "__main__":
    main(parse_args())
