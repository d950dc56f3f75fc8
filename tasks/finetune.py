"""One finetuning flow for every classification-style task (images and EEG windows).

:func:`finetune_classifier`: the encoder with learnable position embeddings (or none,
the plan's ``finetune.pos_embed``) and a linear head on [CLS], the pretrained weights
loaded by name (:func:`tasks.checkpoint.load_encoder_weights`, which reports the new
keys), trained and tested by mmengine's Runner under the plan's ``finetune`` schedule
(its step floor applied: :func:`engine.plan.with_step_floor`), then the sanity
warnings of :meth:`tasks.frozen.FrozenProtocols.finetune_warnings`. A task gives its
two splits, its labels, its evaluator and metrics, and the model's options (Mixup and
CutMix for images, hidden position embeddings for EEG).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from engine.plan import iters_per_epoch, with_step_floor
from engine.runner import build_runner
from methods.backbone import build_encoder

from .base import RunnerSamples
from .checkpoint import load_encoder_weights
from .classifier import ClassifierModel

__all__ = ["finetune_classifier"]


def finetune_classifier(task, *, pretrained, work_dir, log, train, test, num_classes: int,
                        train_labels, test_labels, evaluator: str, metric_names,
                        model_options: dict | None = None, experiment: str = "finetune") -> dict:
    """Finetune ``task.plan``'s encoder on ``train`` and score it on ``test`` (samples
    ``(x, label)``); returns ``metric_names`` from ``evaluator`` (an mmengine metric),
    ``finetune_epochs`` and ``finetune_steps``, ``new_keys`` (weights the pretrained
    encoder did not have), ``final_train_loss`` and ``warnings``."""
    plan = task.plan
    ft = with_step_floor(plan.finetune, plan.sources, "finetune")
    train_set = RunnerSamples(train)
    batch = plan.finetune_batch()
    iters = iters_per_epoch(len(train_set), batch, plan.world_size, len(train_set) >= batch,
                            ft.repeated_aug)
    epochs = ft.epochs_for(iters)
    if epochs != ft.epochs:
        log(f"[finetune] {ft.epochs} epochs of {iters} iterations are fewer than min_steps "
            f"{ft.min_steps}: training {epochs} epochs")
        ft = replace(ft, epochs=epochs)
    encoder = build_encoder(**{**plan.encoder.as_kwargs(),
                               "pos_embed": "learn" if ft.pos_embed else "none",
                               "num_classes": num_classes, "drop_path_rate": ft.drop_path})
    report = None
    if pretrained is not None:
        report = load_encoder_weights(encoder, Path(pretrained) / "encoder.pth", log=log)
    model = ClassifierModel(encoder, num_classes, smoothing=ft.smoothing, **(model_options or {}))
    runner = build_runner(
        model, work_dir, train_set, schedule=ft, batch_per_process=batch, loader=plan.loader,
        seed=plan.seed, test_dataset=RunnerSamples(test), test_evaluator=dict(type=evaluator),
        experiment_name=experiment)
    runner.train()
    metrics = runner.test()
    out = {k: float(metrics[k]) for k in metric_names}
    out.update(finetune_epochs=int(epochs),
               finetune_steps=int(epochs * iters // max(1, ft.grad_accum)))
    if report is not None:
        out["new_keys"] = report["missing"]
    # a finetuning that learnt nothing says so
    task.finetune_warnings(runner, out, train_labels, num_classes, ft.smoothing, test_labels, log)
    return out
