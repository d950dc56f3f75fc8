"""The GPU path, checked where a CPU can check it: the precision a plan resolves to on
each kind of device (the device injected, never probed) and a bf16 autocast step through
the real Runner on this CPU; fused attention in every method's encoder, MP3's key mask
against a naive softmax; hooks that read the device only at log intervals (host reads
counted on the tensors themselves); training steps with no host read at all; the
compile switch reaching the Runner."""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from engine.errors import ConfigError, TrainingError
from engine.plan import LoaderPlan, PretrainPlan
from engine.precision import DeviceCaps, resolve_precision
from engine.runner import SuiteModel, build_runner

H100 = DeviceCaps(cuda=True, bf16=True, name="NVIDIA H100 80GB HBM3")
V100 = DeviceCaps(cuda=True, bf16=False, name="Tesla V100-SXM2-16GB")
CPU = DeviceCaps(cuda=False)
SCHEDULE = PretrainPlan(epochs=1, global_batch_size=4, base_lr=1e-2, lr_reference_batch=None,
                        warmup_epochs=0)


@pytest.fixture
def keep_cudnn_flag():
    """A Runner built for an injected GPU sets cudnn.benchmark (env_cfg): put it back."""
    before = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = before


class Tiny(SuiteModel):
    """One linear layer; records what each forward ran under."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.seen, self.losses = [], []

    def forward(self, inputs, data_samples=None, mode: str = "loss"):
        out = self.fc(inputs)
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), out.dtype))
        loss = out.float().pow(2).mean()
        self.losses.append(loss.detach())
        return {"loss": loss}


def _data(n=8):
    from tasks.base import RunnerSamples

    x = torch.linspace(-1, 1, 8)
    return RunnerSamples([(x.clone(), 0) for _ in range(n)])  # every batch the same


def _runner(tmp_path, name, precision="auto", device=CPU, compile=False):
    loader = LoaderPlan(num_workers=0, log_interval=1, precision=precision, compile=compile)
    return build_runner(Tiny(), tmp_path / name, _data(), schedule=SCHEDULE, batch_per_process=4,
                        loader=loader, param_rule="mae", experiment_name=name, device=device)


# ------------------------------------------------------------------ precision
def test_precision_resolves_per_device_capability():
    assert [resolve_precision("auto", d) for d in (H100, V100, CPU)] == ["bf16", "fp16", "fp32"]
    assert [resolve_precision("fp32", d) for d in (H100, V100, CPU)] == ["fp32"] * 3
    assert resolve_precision("bf16", CPU) == "bf16"      # CPU autocast takes bfloat16
    assert resolve_precision("fp16", V100) == "fp16"
    with pytest.raises(ConfigError, match="V100.*no native bfloat16"):
        resolve_precision("bf16", V100)
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_precision("fp16", CPU)


def test_precision_and_compile_are_plan_values_checked_at_plan_time_and_left_out_of_the_key():
    from pipeline.cell import make_plan
    from engine.pretrain import pretrain_key

    base = make_plan("part", "cifar100")
    assert (base.loader.precision, base.loader.compile) == ("auto", False)
    other = make_plan("part", "cifar100", cfg_options={"tasks.cifar100.loader.precision": "bf16",
                                                       "tasks.cifar100.loader.compile": True})
    assert (other.loader.precision, other.loader.compile) == ("bf16", True)
    assert other.sources["loader.precision"] == "command line"
    assert pretrain_key(base, {"data": 1}) == pretrain_key(other, {"data": 1})
    for key, value, message in (("precision", "half", "loader.precision must be one of auto, bf16"),
                                ("compile", "yes", "loader.compile must be true or false")):
        with pytest.raises(ConfigError, match=message):
            make_plan("part", "cifar100", cfg_options={f"tasks.cifar100.loader.{key}": value})


def test_the_runner_gets_the_wrapper_and_loaders_of_its_device(tmp_path, keep_cudnn_flag):
    expected = {  # device -> (wrapper config without the optimizer, pinned memory)
        "h100": (H100, dict(type="BF16OptimWrapper"), True),
        "v100": (V100, dict(type="AmpOptimWrapper", dtype="float16", loss_scale="dynamic"), True),
        "cpu": (CPU, dict(type="OptimWrapper"), False),
    }
    for name, (device, wrapper, pin) in expected.items():
        runner = _runner(tmp_path, name, device=device)
        cfg = {k: v for k, v in runner.optim_wrapper.items()
               if k not in ("optimizer", "constructor", "paramwise_cfg")}
        assert cfg == wrapper, name
        assert runner._train_dataloader["pin_memory"] is pin
        assert runner._train_dataloader["persistent_workers"] is False
        (hook,) = [h for h in runner.hooks if type(h).__name__ == "ThroughputHook"]
        assert hook.precision == {"h100": "bf16", "v100": "fp16", "cpu": "fp32"}[name]


def test_bf16_autocast_trains_through_the_runner_on_cpu(tmp_path):
    runner = _runner(tmp_path, "bf16", precision="bf16")
    model = runner.model
    start = copy.deepcopy(model.fc)
    runner.train()
    from engine.precision import BF16OptimWrapper
    from engine.throughput import read_throughput

    assert isinstance(runner.optim_wrapper, BF16OptimWrapper)
    assert model.seen == [(True, torch.bfloat16, torch.bfloat16)] * 2  # 8 samples, batch 4
    x = torch.linspace(-1, 1, 8).expand(4, 8)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = start(x).float().pow(2).mean()
        fp32 = start(x).pow(2).mean()
    assert torch.equal(model.losses[0], bf16) and not torch.equal(bf16, fp32)
    assert model.fc.weight.dtype == torch.float32 and not torch.equal(model.fc.weight, start.weight)
    assert read_throughput(tmp_path / "bf16")["train"]["precision"] == "bf16"


def test_compile_switch_reaches_the_runner_and_compiles_the_forward_only(tmp_path):
    """A real torch.compile costs seconds here, so the model's own ``compile`` is recorded
    instead (on this one instance); the switch's default is off."""
    assert LoaderPlan().compile is False
    for flag in (False, True):
        runner = _runner(tmp_path, f"compile{flag}", compile=flag)
        assert bool(runner.cfg.get("compile")) is flag
        calls = []
        runner.model.compile = lambda **options: calls.append(options)
        runner._maybe_compile("train_step")
        assert calls == ([{}] if flag else [])


# ------------------------------------------------------------------ attention
SMALL = {"part": dict(num_pairs=64), "mae": dict(decoder_dim=32, decoder_depth=1, decoder_heads=2),
         "droppos": dict(decoder_dim=32, decoder_depth=1, decoder_heads=2), "mp3": {}}


@pytest.fixture(scope="module")
def pretraining_methods():
    """Every registered method that pretrains (variants included), micro-sized."""
    from methods import METHODS, build_method

    torch.manual_seed(0)
    enc = dict(arch="vit_micro", img_size=32, patch_size=4)
    return [(name, build_method(name, encoder=enc, **SMALL[entry.base or name]))
            for name, entry in METHODS.items() if entry.cls.pretrains]


def test_every_methods_attention_is_fused_and_mp3_masks_through_sdpa(pretraining_methods, monkeypatch):
    from timm.layers import Attention

    assert {n for n, _ in pretraining_methods} >= {"part", "mae", "mp3", "droppos"}
    for name, method in pretraining_methods:
        attn = [m for m in method.modules() if isinstance(m, Attention)]
        assert len(attn) >= len(method.encoder.blocks), name
        assert all(a.fused_attn for a in attn), name
    # MP3's key subset goes to F.scaled_dot_product_attention as a mask, in every block
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append(None if attn_mask is None else (tuple(attn_mask.shape), attn_mask.dtype))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    mp3 = dict(pretraining_methods)["mp3"]
    mp3(torch.randn(2, 3, 32, 32))
    assert seen == [((2, 1, 65, 65), torch.bool)] * len(mp3.encoder.blocks)


def test_mp3_masked_attention_equals_a_naive_softmax():
    from methods.mp3 import MP3, key_attention_mask, sample_key_mask

    torch.manual_seed(0)
    attn = MP3(dict(arch="vit_micro", img_size=32, patch_size=4)).encoder.blocks[0].attn.eval()
    b, n, d, h = 2, 64, attn.qkv.in_features, attn.num_heads
    x = torch.randn(b, 1 + n, d)
    kept = sample_key_mask(b, n, 0.75)
    mask = key_attention_mask(kept)
    got = attn(x, attn_mask=mask)
    # by hand: q, k, v per head; keys outside the subset (and not [CLS]) get -inf
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).view(b, 1 + n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
    is_key = torch.cat([torch.ones(b, 1, dtype=torch.bool), kept], 1)[:, None, None, :]
    scores = scores.masked_fill(~is_key, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, 1 + n, d)
    want = out @ attn.proj.weight.T + attn.proj.bias
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, attn(x), atol=1e-3)  # the mask changes the result


# ------------------------------------------------------------------ host reads
class Counted(torch.Tensor):
    """A tensor that counts reads of its values (or of anything computed from it) on
    the host: what a GPU tensor would have to synchronise for."""

    reads: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "cpu"):
            cls.reads.append(name)
        return super().__torch_function__(func, types, args, kwargs or {})


def _fake_runner(tmp_path, name, length=10):
    from mmengine.logging import MessageHub

    saved = []
    return SimpleNamespace(iter=0, epoch=0, max_iters=100, train_dataloader=[None] * length,
                           work_dir=str(tmp_path), model=nn.Linear(1, 1), saved=saved,
                           message_hub=MessageHub.get_instance(f"gpu-path-{name}"),
                           save_checkpoint=lambda d, n, **kw: saved.append(n))


def test_hooks_read_the_device_only_at_log_intervals_and_epoch_ends(tmp_path):
    from engine.hostsync import DeferredRuntimeInfoHook
    from engine.resume import PreemptionHook
    from engine.runner import FiniteLossHook

    runner = _fake_runner(tmp_path, "reads")
    hooks = [DeferredRuntimeInfoHook(interval=4), FiniteLossHook(interval=4), PreemptionHook(interval=4)]
    losses = [0.5 + i for i in range(10)]
    read_at = []
    for i, value in enumerate(losses):  # 10 batches, interval 4: reads after batches 4, 8, 10
        runner.iter = i
        Counted.reads = []
        out = {"loss": torch.tensor(value).as_subclass(Counted),
               "acc": torch.tensor(i, dtype=torch.int64).as_subclass(Counted)}
        for h in hooks:
            h.after_train_iter(runner, i, None, out)
        if Counted.reads:
            read_at.append(i + 1)
    assert read_at == [4, 8, 10]
    # the message hub got every iteration's values, in order
    history, _ = runner.message_hub.get_scalar("train/loss").data
    assert history.tolist() == pytest.approx(losses)
    assert runner.message_hub.get_scalar("train/acc").data[0].tolist() == list(range(10))


def test_a_nan_loss_stops_at_the_next_read_naming_its_iteration(tmp_path):
    from engine.runner import FiniteLossHook

    runner = _fake_runner(tmp_path, "nan")
    hook = FiniteLossHook(interval=4)
    hook.before_train(runner)
    for i, value in enumerate([1.0, float("nan"), 1.0]):  # batches 1-3: nothing read yet
        runner.iter = i
        hook.after_train_iter(runner, i, None, {"loss": torch.tensor(value)})
    runner.iter = 3
    with pytest.raises(TrainingError, match=r"loss became nan at iteration 2 \(epoch 1\); stopped at "
                                            r"iteration 4 .*iterations 1-4 read together") as exc:
        hook.after_train_iter(runner, 3, None, {"loss": torch.tensor(1.0)})
    assert exc.value.step == 2


def test_a_checkpoint_is_not_written_past_an_unread_nan(tmp_path):
    from engine.resume import SuiteRunner
    from engine.runner import FiniteLossHook

    hook = FiniteLossHook(interval=50)
    runner = _fake_runner(tmp_path, "save")
    runner.hooks = [hook]
    hook.after_train_iter(runner, 0, None, {"loss": torch.tensor(float("inf"))})
    with pytest.raises(TrainingError, match="loss became inf at iteration 1"):
        SuiteRunner.save_checkpoint(runner, str(tmp_path), "iter_1.pth")
    assert not list(tmp_path.glob("*iter_1.pth*"))


def test_ranks_agree_at_the_same_read_on_a_peers_nan_and_a_peers_sigterm(tmp_path, monkeypatch):
    """Two ranks, simulated: this rank's losses are finite and it got no signal; the
    other rank's first NaN is at iteration 3 and it got SIGTERM in iteration 2. The
    collectives (MIN of the first bad iteration, MAX of the stop flag) happen at the
    read after batch 4 only, and both decisions follow from their result."""
    import torch.distributed as dist

    import engine.resume
    import engine.runner
    from engine.resume import Preempted, PreemptionHook
    from engine.runner import FiniteLossHook

    monkeypatch.setattr(engine.runner, "world_size", lambda: 2)
    monkeypatch.setattr(engine.resume, "world_size", lambda: 2)
    calls = []

    def all_reduce(t, op=None):
        calls.append(op)
        peer = torch.tensor([3]) if op == dist.ReduceOp.MIN else torch.tensor([1.0])
        t.copy_(torch.minimum(t, peer) if op == dist.ReduceOp.MIN else torch.maximum(t, peer))

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    runner = _fake_runner(tmp_path, "ddp")
    loss_hook, stop_hook = FiniteLossHook(interval=4), PreemptionHook(interval=4)
    for i in range(3):
        runner.iter = i
        loss_hook.after_train_iter(runner, i, None, {"loss": torch.tensor(1.0)})
        stop_hook.after_train_iter(runner, i, None, None)
    assert calls == [] and runner.saved == []
    runner.iter = 3
    with pytest.raises(TrainingError, match="non-finite on another rank at iteration 3") as exc:
        loss_hook.after_train_iter(runner, 3, None, {"loss": torch.tensor(1.0)})
    assert exc.value.step == 3
    with pytest.raises(Preempted, match="after iteration 4"):
        stop_hook.after_train_iter(runner, 3, None, None)
    assert calls == [dist.ReduceOp.MIN, dist.ReduceOp.MAX] and runner.saved == ["iter_4.pth"]


class SyncOps(TorchDispatchMode):
    """Records the aten ops that make a GPU wait for the host: a scalar read
    (``_local_scalar_dense``: .item(), float(), bool()), ``nonzero`` and a boolean index
    (their output size is data-dependent). (A CPU tensor's ``tolist()`` is no aten op and
    is not seen here; the hooks' reads are counted by :class:`Counted` instead.)"""

    def __init__(self):
        super().__init__()
        self.found = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name.startswith(("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select")):
            self.found.add(name)
        if name.startswith(("aten.index.", "aten.index_put")) and len(args) > 1:
            if any(t is not None and t.dtype == torch.bool for t in args[1]):
                self.found.add(name + " (boolean index)")
        return func(*args, **(kwargs or {}))


def test_no_methods_bf16_training_step_reads_the_device_on_the_host(pretraining_methods):
    from methods import build_method

    methods = list(pretraining_methods)
    methods.append(("part 1d", build_method("part", encoder=dict(arch="vit_micro", modality="1d",
                                                                  img_size=400, patch_size=50,
                                                                  in_chans=2), num_pairs=16)))
    for name, method in methods:  # under bf16 autocast, as on a GPU
        x = torch.randn(2, 2, 400) if name == "part 1d" else torch.randn(2, 3, 32, 32)
        with SyncOps() as ops:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = method(x)["loss"]
            loss.backward()
        assert ops.found == set(), name
        assert loss.dtype == torch.float32 and torch.isfinite(loss), name


def test_sampler_extraction_without_reading_the_boxes_equals_reading_them():
    from methods.sampling import PatchSampler, extract_patches, extract_windows

    g = torch.Generator().manual_seed(0)
    images, signals = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 2, 400, generator=g)
    for modality, mode, x, read in (("2d", "offgrid", images, extract_patches),
                                    ("2d", "grid", images, extract_patches),
                                    ("2d", "scale_aspect", images, extract_patches),
                                    ("1d", "offgrid", signals, extract_windows),
                                    ("1d", "grid", signals, extract_windows)):
        n = 64 if modality == "2d" else 8
        sampler = PatchSampler(modality, mode, 4 if modality == "2d" else 50, n)
        boxes = sampler.sample(x, torch.Generator().manual_seed(1))
        assert torch.equal(sampler.extract(x, boxes), read(x, boxes, sampler.patch_size)), mode
