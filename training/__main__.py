"""The library by hand, without Dagster:

    python -m training clean <landing dir> <out dir>   # the CLIP, then every ready batch cleaned and deduplicated
    python -m training clip <landing dir> <out dir>    # the CLIP alone: trained (or configured) and evaluated
"""

import argparse
import json
from pathlib import Path

from training.clip.build import build_clip_model, current_clip
from training.config import CleaningConfig, ClipTrainConfig
from training.data.clean import clean_landing
from training.data.zone import landing_root
from training.layout import Layout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["clean", "clip"])
    parser.add_argument("landing", type=landing_root, help="the landing zone: a folder, or a URL (s3://bucket/prefix), one batch per folder")
    parser.add_argument("out", type=Path, help="where clip_model/, cleaned_corpus/ and rejected/ are written")
    args = parser.parse_args(argv)
    config, out = CleaningConfig(), Layout(args.out)
    report = build_clip_model(args.landing, out.clip_model, ClipTrainConfig(), config.image)
    if args.command == "clean":
        clip = current_clip(out.clip_model, config.image)
        result = clean_landing(args.landing, out.cleaned_corpus, out.rejected, config, clip, print)
        report = {m: {**v, "reasons": dict(v["reasons"])} for m, v in result.by_modality().items()}
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
