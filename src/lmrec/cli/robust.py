"""The commands that attack a dataset and look for the attack: ``lmrec attack`` writes a poisoned
copy of a dataset (fake users pushing target items, optionally rewritten target text) and
``lmrec detect`` flags suspicious users and writes a copy without them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmrec.cli.options import positive, tell
from lmrec.errors import ConfigError

if TYPE_CHECKING:
    from lmrec.data.schema import Dataset

ATTACK_FILE = "attack.json"
DETECT_FILE = "detect.json"


def add_parsers(sub: Any) -> None:
    """Register ``attack`` and ``detect`` on the ``lmrec`` subparsers."""
    p = sub.add_parser("attack", help="write a poisoned copy of a dataset: fake users pushing target items")
    p.add_argument("--dataset", required=True, help="registered name (ml-100k) or a file/directory")
    p.add_argument("--kind", default="bandwagon", choices=["random", "bandwagon", "sequence"])
    p.add_argument("--fraction", type=float, default=0.01, help="fake users per genuine user (0.01: 1 %%)")
    p.add_argument("--targets", type=positive, default=20, help="how many unpopular target items to draw")
    p.add_argument("--target", action="append", default=[], metavar="ITEM", help="push this item (instead)")
    p.add_argument("--length", type=positive, help="fake profile length (default: the median history length)")
    p.add_argument(
        "--popular",
        type=positive,
        default=50,
        help="the pool of most popular items bandwagon fillers (and the 2 after a target) come from",
    )
    p.add_argument(
        "--text-words", type=int, default=0, metavar="N", help="also append N popular words to targets' text"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="directory to create (lmrec train --dataset reads it)")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("detect", help="flag suspicious (fake) users and write a copy of the dataset without them")
    p.add_argument("--dataset", required=True, help="registered name (ml-100k) or a file/directory")
    p.add_argument("--fraction", type=float, default=0.01, help="share of users to flag (the expected fakes)")
    p.add_argument("--threshold", type=float, help="flag users scoring at least this instead")
    p.add_argument("--fakes", metavar="attack.json", help="the attack's record, to report precision and recall")
    p.add_argument("--out", required=True, help="directory to create: the cleaned dataset and detect.json")
    p.add_argument("--json", action="store_true", help="print detect.json's summary")
    p.set_defaults(func=cmd_detect)


def _load(dataset: str, cache_dir: Path) -> Dataset:
    """A registered dataset name or a path any loader reads (as ``lmrec train`` and ``lmrec mask``
    resolve ``--dataset``)."""
    from lmrec.data.loaders import load
    from lmrec.data.sources import SOURCES, load_source

    return load_source(dataset, cache_dir) if dataset in SOURCES else load(Path(dataset))


def cmd_attack(args: argparse.Namespace) -> int:
    from lmrec.robust.attacks import Attack, choose_targets, inject, text_attack, text_column, write_dataset

    ds = _load(args.dataset, args.cache_dir)
    targets = list(args.target) or choose_targets(ds, args.targets, args.seed)
    attack = Attack(args.kind, args.fraction, tuple(targets), args.length, args.popular, args.seed)
    poisoned, fakes = inject(ds, attack)
    text = None
    if args.text_words > 0:
        text = {"column": text_column(poisoned), "n_words": args.text_words}
        poisoned = text_attack(poisoned, targets, args.text_words, args.seed)
    out = write_dataset(poisoned, args.out)
    record = {
        "dataset": args.dataset,
        "attack": attack.as_dict(),
        "targets": list(attack.targets),
        "genuine_users": ds.n_users,
        "fake_users": fakes,
        "text_attack": text,
    }
    (out / ATTACK_FILE).write_text(json.dumps(record, indent=2))
    tell(
        f"{args.kind} attack: {len(fakes)} fake users pushing {len(targets)} items into {ds.n_users} genuine users"
        + (f", targets' {text['column']} rewritten" if text else "")
        + f" → {out} (train on it with `lmrec train --dataset {out}`)"
    )
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from lmrec.robust.attacks import write_dataset
    from lmrec.robust.detect import detect, detection_quality, remove_users

    ds = _load(args.dataset, args.cache_dir)
    result = detect(ds, args.fraction, threshold=args.threshold)
    cleaned = remove_users(ds, result.flagged)
    out = write_dataset(cleaned, args.out)
    record: dict[str, Any] = {
        "dataset": args.dataset,
        "expected_fraction": args.fraction,
        "users": ds.n_users,
        **result.as_dict(),
    }
    if args.fakes:
        try:
            fakes = [str(u) for u in json.loads(Path(args.fakes).read_text())["fake_users"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"--fakes {args.fakes}: not an attack record with fake_users ({err})") from None
        present = [u for u in fakes if u in ds.users]
        record["quality"] = detection_quality(result.flagged, present, ds.n_users - len(present))
    (out / DETECT_FILE).write_text(json.dumps(record, indent=2))
    tell(f"flagged {len(result.flagged)} of {ds.n_users} users (score ≥ {result.threshold:.2f}) → {out}")
    if "quality" in record:
        q = record["quality"]
        tell(
            f"against {args.fakes}: precision {q['precision']:.3f}, recall {q['recall']:.3f}, "
            f"{q['genuine_removed']} genuine users removed ({q['genuine_removed_share']:.2%})"
        )
    if args.json:
        print(json.dumps({k: v for k, v in record.items() if k != "flagged"}))
    return 0
