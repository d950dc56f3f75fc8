"""A run prints our progress lines and mmengine's training log, not mmengine's set-up
output (environment block, hook table, deprecation notices it triggers itself) nor
warnings it raises about our data sets; ``--verbose`` brings the set-up output back."""
import pytest
from forked_cli import run_cli

TINY = ["--method", "scratch", "--task", "cifar100", "--cfg-options",
        "tasks.cifar100.data.embedded.num_train=32", "tasks.cifar100.data.embedded.num_test=16",
        "tasks.cifar100.loader.num_workers=0", "tasks.cifar100.loader.log_interval=1",
        "tasks.cifar100.finetune.epochs=1",
        "tasks.cifar100.finetune.min_steps=2", "tasks.cifar100.finetune.global_batch_size=16"]
NOISE = ("Hooks will be executed in the following order", "System environment:",
         '"FileClient" will be deprecated', '"HardDiskBackend" is the alias of', "has no metainfo",
         "Distributed training is not used, all SyncBatchNorm")


@pytest.mark.parametrize("verbose", [False, True])
def test_a_run_is_quiet_unless_verbose(tmp_path, verbose):
    args = TINY + ["--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")]
    status, out, err = run_cli(args + (["--verbose"] if verbose else []), tmp_path)
    assert status == 0, err[-2000:]
    text = out + err
    assert "Epoch(train)" in text or "Iter(train)" in text  # mmengine's training log stays
    assert "/ cifar100 / preset tiny / seed 0" in out         # and our summary
    assert "has no metainfo" not in text                     # fixed at its source either way
    shown = [n for n in NOISE[:2] if n in text]
    assert shown == (list(NOISE[:2]) if verbose else []), shown
    if not verbose:
        assert not [n for n in NOISE if n in text]
