"""Rank the methods' frozen encoders: kNN and linear-probe accuracy over seeds, with intervals.

    python -m benchmarks.rank                  # tiny preset, cifar100, seeds 0..2
    python -m benchmarks.rank --seeds 5 --task imagenet --preset paper --data-root /data/imagenet
    python -m benchmarks.rank --task eeg       # Table 3's rows, frozen: kappa and accuracy
    make rank

Finetuning accuracy mixes what pretraining learnt with what the finetuning recipe can
recover, and one finetuning run on the tiny preset moves by several points from seed
to seed. The frozen protocols read the pretrained encoder as it is
(:mod:`tasks.protocols`): DINO's weighted kNN on the [CLS] token and on the mean patch
token, and a linear probe on both. Each (method, seed) pretrains once (cached, shared
with every table) and is evaluated by both protocols on cached features, so a ranking
of every method over three seeds takes minutes once the pretraining is cached.

Rows are the methods of the paper's main tables and, as the reference, the same
encoder randomly initialised (``scratch`` evaluated frozen): a method's cell is marked
``*`` only when its paired difference to the random encoder over the seeds excludes 0.
The table is written to ``results/<preset>/rank[_<task>].{csv,md}`` like the others.

Columns: each score the task's frozen protocols report (``frozen_scores`` of
:class:`tasks.frozen.FrozenProtocols`) on [CLS], on the mean token and by the probe:
top-1 accuracy for the image tasks; for ``eeg`` (Table 3's methods under the frozen
protocols) Cohen's kappa, the paper's metric for sleep staging, and then accuracy, whose
column carries the warnings (an accuracy within noise of the majority stage).
"""
from __future__ import annotations

import argparse
import sys

from benchmarks.tables import Column, Row, Table, dry_run_table, fill

RANDOM = "Random init (no pretraining)"
METHODS = (("MAE", "mae"), ("MP3", "mp3"), ("DropPos", "droppos"), ("PART", "part"))


#: how a score is shown: column label suffix (where a task has several), decimals, and
#: the title's words
SCORE_SHOWN = {"acc1": (" acc", 1, "top-1 accuracy"), "kappa": (" kappa", 3, "Cohen's kappa"),
               "macro_f1": (" macro-F1", 3, "macro-F1")}
TINY_NOTES = {
    "eeg": "Tiny preset: 30 generated 1-hour PhysioNet-format records, 10 pretraining epochs "
           "per method; kNN and the probe read the 4 finetune subjects' windows and are scored "
           "on the 6 test subjects' (Table 3's split); the seed changes pretraining, the data "
           "stay the same.",
    None: "Tiny preset: embedded generated scenes (4000 train / 1000 test images, 10 classes), "
          "6 pretraining epochs per method; the seed changes pretraining, the data stay the same.",
}


def rank_table(task: str = "cifar100") -> Table:
    from tasks import TASKS

    scores = TASKS[task].frozen_scores if task in TASKS and "protocol" in TASKS[task].sections \
        else ("acc1",)
    columns = []
    for score in scores:
        suffix, digits, _ = SCORE_SHOWN[score]
        suffix = suffix if len(scores) > 1 else ""
        columns += [Column(f"kNN [CLS]{suffix}", task, f"knn_{score}_cls", "", digits=digits,
                           protocol="knn"),
                    Column(f"kNN avg{suffix}", task, f"knn_{score}_avg", "", digits=digits,
                           protocol="knn"),
                    Column(f"linear{suffix}", task, f"linear_{score}", "", digits=digits,
                           protocol="linear")]
    return Table(
        title=(f"Ranking: frozen-encoder kNN and linear-probe "
               f"{' and '.join(SCORE_SHOWN[s][2] for s in scores)} ({task})"),
        rows=(Row(RANDOM, "scratch"), *(Row(label, method) for label, method in METHODS)),
        columns=tuple(columns),
        reference=RANDOM,
        note="Frozen encoders: weighted kNN (k = 20, T = 0.07, cosine) on the [CLS] token "
             "and on the mean of the patch tokens, and a linear probe on both concatenated "
             "(features standardised by the training split's statistics). The random-init "
             "row is the preset's encoder with its initial weights, seeded by the seed.",
        preset_notes={"tiny": TINY_NOTES.get(task, TINY_NOTES[None])},
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rank", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--task", default="cifar100",
                   help="a classification-style task (cifar100, imagenet, eeg)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--no-run", action="store_true", help="only render from existing records")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache", default=None)
    p.add_argument("--dry-run", action="store_true", help="print every cell's plan, run nothing")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    args = p.parse_args(argv)
    from engine.cli import run_command

    def body():
        table = rank_table(args.task)
        name = "rank" if args.task == "cifar100" else f"rank_{args.task}"
        if args.dry_run:
            dry_run_table(name, args.preset, args.seeds, args.data_root, args.cache, table=table)
        else:
            fill(name, args.preset, args.seeds, not args.no_run, args.data_root, args.cache,
                 table=table)

    return run_command(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
