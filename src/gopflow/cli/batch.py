"""``gopflow batch``: many videos through one cluster, with a manifest and a summary.

The per-file flags are ``gopflow transcode``'s (parsed with ``argparse.SUPPRESS``, so only
the flags a user gave reach :class:`~gopflow.jobs.config.TranscodeOptions`); the batch's own
are the inputs, ``-o`` (a folder), ``--list``, ``--name-template`` and ``--report``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gopflow.cli.transcode import add_progress_option, add_transcode_options
from gopflow.jobs.config import BatchOptions, TranscodeOptions


def add_batch_parser(commands: Any, epilog: str) -> argparse.ArgumentParser:
    """The ``batch`` subcommand."""
    parser = commands.add_parser(
        "batch",
        help="transcode many videos on one cluster, resumable",
        description=(
            "Transcode every INPUT (files, folders searched recursively for videos, globs "
            "such as 'raw/**/*.mov', or the rows of --list FILE) into the folder OUT, the "
            "input tree mirrored under it. All videos share one Ray cluster and one window "
            "of GOPs in flight: the next video is planned and starts encoding while the "
            "last one finishes. A video that fails is reported and the batch goes on; the "
            "exit status is 1 when any failed. OUT/gopflow-batch.jsonl logs every file and "
            "GOP; --resume redoes no finished file and no finished GOP."
        ),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="video files, folders or globs (quote globs)")
    parser.add_argument("-o", "--output", dest="output_dir", required=True, metavar="OUT",
                        help="output folder (created if missing)")
    parser.add_argument(
        "--list", dest="list_file", metavar="CSV",
        help="a CSV with an 'input' column (relative to the CSV's folder), an optional "
        "'output' column (relative to OUT) and any transcode flag as a column of its own "
        "('crf', 'codec', 'preset', 'target-vmaf'...): per-file options",
    )
    parser.add_argument(
        "--name-template", metavar="T",
        help="each output's name: {stem} {ext} {name} {dir} {codec} {crf} {preset} "
        "{quality} (default: {stem}.{ext}; ext is mp4, mkv under QRO, gflv for learned "
        "codecs)",
    )
    add_transcode_options(parser)
    out = parser.add_argument_group("reporting")
    out.add_argument("--report", help="write the batch's JSON report (per file and per GOP)")
    add_progress_option(out)
    return parser


def run_batch_command(args: argparse.Namespace) -> int:
    """Run the batch; print the summary table; 1 when any file failed."""
    from gopflow.jobs.batch import run_batch

    fields = set(TranscodeOptions.__dataclass_fields__)
    options = vars(args)
    given = {name: value for name, value in options.items()
             if name in fields and name != "report"}
    request = BatchOptions(
        inputs=tuple(options.get("inputs", ())),
        output_dir=options["output_dir"],
        transcode=TranscodeOptions(**given),
        list_file=options.get("list_file"),
        name_template=options.get("name_template", BatchOptions.name_template),
        report=options.get("report"),
    )
    report = run_batch(request, log=lambda message: print(message, file=sys.stderr))
    print(report.table(), file=sys.stderr)
    totals = report.to_dict()["totals"]
    fps = report.frames / report.wall_seconds if report.wall_seconds else 0.0
    print(
        f"batch: {totals['done']} done, {totals['skipped']} done earlier, {totals['failed']} "
        f"failed; {report.frames} frames in {report.wall_seconds:.1f} s ({fps:.1f} fps); "
        f"manifest {report.manifest}",
        file=sys.stderr,
    )
    if report.failed:
        print(f"gopflow: error: {len(report.failed)} of {len(report.files)} files failed",
              file=sys.stderr)
        return 1
    return 0
