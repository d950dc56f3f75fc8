"""Fault injection for tests/test_faults.py: run by the children it starts
(tests/forked_cli.py), or by a fresh interpreter with ``PYTHONPATH=tests/faults``, e.g.
``PYTHONPATH=tests/faults PART_BENCH_TEST_FAULT=kill@coco:5 python -m benchmarks.run ...``.
``PART_BENCH_TEST_FAULT`` is one of

- ``kill@<experiment>:<N>``: SIGKILL this process right after training iteration N of
  the Runner whose experiment name starts with <experiment> (pretrain, finetune, coco,
  eeg);
- ``term@<experiment>:<N>``: SIGTERM instead (what Slurm sends before preemption);
- ``killsave@<experiment>:<file>``: SIGKILL halfway through writing checkpoint <file>;
- ``sleep:<seconds>``: sleep after every training iteration (to make runs overlap);
- ``collapse@<experiment>``: after every training iteration, set the encoder's final
  LayerNorm to weight 0 and a fixed bias, so that every token of every image is the same
  vector (a collapsed encoder).
"""
import os

FAULT = os.environ.get("PART_BENCH_TEST_FAULT", "")

if FAULT:
    import signal
    import time

    import engine.runner as _runner
    import mmengine.runner.runner as _mm_runner

    kind, _, where = FAULT.partition("@") if "@" in FAULT else FAULT.partition(":")
    experiment, _, arg = where.partition(":")

    _after_iter = _runner.TrainingProgressHook.after_train_iter

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        _after_iter(self, runner, batch_idx, data_batch, outputs)
        if kind == "sleep":
            time.sleep(float(where))
        elif kind == "collapse" and runner.experiment_name.startswith(experiment):
            import torch

            norm = runner.model.encoder.norm
            with torch.no_grad():
                norm.weight.zero_()
                norm.bias.copy_(torch.linspace(-1.0, 1.0, norm.bias.numel()))
        elif kind in ("kill", "term") and runner.experiment_name.startswith(experiment) \
                and runner.iter + 1 == int(arg):
            os.kill(os.getpid(), signal.SIGKILL if kind == "kill" else signal.SIGTERM)

    _runner.TrainingProgressHook.after_train_iter = after_train_iter

    if kind == "killsave":
        _save = _mm_runner.save_checkpoint

        def save_checkpoint(checkpoint, filename, *args, **kwargs):
            name = os.path.basename(filename)
            if name.startswith(f".{arg}") and checkpoint["meta"].get("experiment_name", "").startswith(experiment):
                _save(checkpoint, filename, *args, **kwargs)
                size = os.path.getsize(filename)
                with open(filename, "r+b") as f:
                    f.truncate(size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return _save(checkpoint, filename, *args, **kwargs)

        _mm_runner.save_checkpoint = save_checkpoint
