"""Worker of tests/test_scale_out.py: a few pretraining steps of PART and MAE and one
classifier evaluation on mmengine's Runner (:func:`engine.runner.build_runner`), as one
process or, under ``torchrun --nproc_per_node 2``, as two ranks (gloo, DDP).

    python tests/scale_out_worker.py OUT                           # world size 1
    torchrun --nproc_per_node 2 tests/scale_out_worker.py OUT      # world size 2

After every optimizer step each rank writes its weights and its loss to
``OUT/<method>_ws<world>_r<rank>_s<step>.pt``; the evaluation writes
``OUT/eval_ws<world>_r<rank>.pt`` (the Runner's metrics and the labels it scored).

The global batch is the whole data set (8 images, 4 per rank on 2 ranks), so both runs
train on the same images at every step whatever order the sampler draws. A method's
random draws (PART's boxes and pairs, MAE's masks) come from a generator seeded by the
step and the image's index, one image at a time, so they do not depend on how the batch
is split over ranks; the loss of a batch is the mean of its images' losses, and DDP's
gradient average over two equal halves is then the gradient of the whole batch's mean.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.plan import FinetunePlan, LoaderPlan, PretrainPlan  # noqa: E402
from engine.pretrain import PRETRAIN_PARAM_RULE, PretrainModel  # noqa: E402
from engine.runner import build_runner  # noqa: E402
from methods import build_method  # noqa: E402
from tasks.base import RunnerSamples  # noqa: E402

ENCODER = dict(arch="vit_micro", img_size=32, patch_size=4)
METHODS = {"part": dict(num_pairs=64), "mae": dict(decoder_dim=32, decoder_depth=1, decoder_heads=2)}
NUM_IMAGES, STEPS, EVAL_IMAGES = 8, 3, 13


class PerImageDraws(PretrainModel):
    """The method's own forward, one image at a time, with its random draws seeded by
    (step, image index): the data samples are the images' indices in the data set."""

    def __init__(self, method):
        super().__init__(method)
        self.step = 0

    def forward(self, inputs, data_samples=None, mode: str = "loss"):
        losses = []
        for x, idx in zip(inputs, data_samples.tolist()):
            g = torch.Generator().manual_seed(1000 * self.step + int(idx))
            losses.append(self.method(x[None], generator=g)["loss"])
        self.step += 1
        return {"loss": torch.stack(losses).mean()}


def rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def pretrain_steps(name: str, out: Path) -> None:
    from mmengine.hooks import Hook

    rank, world = rank_world()
    torch.manual_seed(0)  # the same initial weights in both runs (DDP also broadcasts rank 0's)
    method = build_method(name, encoder=ENCODER, **METHODS[name])
    images = torch.randn(NUM_IMAGES, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    data = RunnerSamples([(images[i], i) for i in range(NUM_IMAGES)])
    schedule = PretrainPlan(epochs=STEPS, global_batch_size=NUM_IMAGES, base_lr=1e-3,
                            lr_reference_batch=None, warmup_epochs=0)

    class SaveAfterStep(Hook):
        priority = "LOWEST"

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            model = runner.model.module if hasattr(runner.model, "module") else runner.model
            state = {k: v.detach().clone() for k, v in model.method.state_dict().items()}
            torch.save(dict(loss=float(outputs["loss"].detach()), state=state),
                       out / f"{name}_ws{world}_r{rank}_s{runner.iter}.pt")

    runner = build_runner(PerImageDraws(method), out / f"work_{name}_ws{world}", data,
                          schedule=schedule, batch_per_process=NUM_IMAGES // world,
                          loader=LoaderPlan(num_workers=0, log_interval=1), seed=0,
                          experiment_name=f"scale_out_{name}_ws{world}",
                          param_rule=PRETRAIN_PARAM_RULE)
    runner.register_hook(SaveAfterStep())
    runner.train()


def evaluate(out: Path) -> None:
    """A classifier's test-set metric through the Runner's evaluator. Labels are the
    model's own predictions on the first 9 of 13 images and another class on the rest,
    so the whole set scores 9/13, and either rank's shard alone something else."""
    from methods.backbone import build_encoder
    from tasks.classifier import ClassifierModel
    from tasks.metrics import Top1Accuracy  # noqa: F401  (registers the metric)

    rank, world = rank_world()
    torch.manual_seed(0)
    enc = build_encoder(pos_embed="learn", num_classes=5, **ENCODER)
    model = ClassifierModel(enc, 5)
    images = torch.randn(EVAL_IMAGES, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        preds = model.eval().logits(images).argmax(-1)
    labels = [int(p) if i < 9 else (int(p) + 1) % 5 for i, p in enumerate(preds)]
    test = RunnerSamples([(images[i], labels[i]) for i in range(EVAL_IMAGES)])
    schedule = FinetunePlan(epochs=1, global_batch_size=2 * world, repeated_aug=1)
    runner = build_runner(model, out / f"work_eval_ws{world}", test, schedule=schedule,
                          batch_per_process=2, loader=LoaderPlan(num_workers=0), seed=0,
                          test_dataset=test, test_evaluator=dict(type="Top1Accuracy"),
                          test_batch_size=3, experiment_name=f"scale_out_eval_ws{world}")
    metrics = runner.test()
    torch.save(dict(metrics=dict(metrics), labels=labels), out / f"eval_ws{world}_r{rank}.pt")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name in METHODS:
        pretrain_steps(name, out)
    evaluate(out)
