"""The device and precision policy (tools/device.py), one row per kind of machine students train on."""
import re

import pytest
import torch

import train
from tools import device as dev
from train import parse_args as parse_train_args

BF16, FP16 = torch.bfloat16, torch.float16


@pytest.fixture
def cuda(monkeypatch):
    """Pretend a CUDA GPU of the given compute capability is there (or none: ``None``)."""
    def install(capability, count=1):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count if capability is not None else 0)
        monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"GPU {capability}")
    return install


@pytest.mark.parametrize("capability, cpu_bf16, device, train_dtype, infer_dtype, scaler", [
    ((6, 0), False, "cuda:0", FP16, FP16, True),   # P100
    ((7, 5), False, "cuda:0", FP16, FP16, True),   # T4: fp16 + GradScaler, what the card is built for
    ((8, 0), False, "cuda:0", BF16, FP16, False),  # A100: native bf16 training, no scaler; fp16 inference
    ((9, 0), False, "cuda:0", BF16, FP16, False),  # H100 / H200
    (None, True, "cpu", BF16, None, False),        # CPU with AVX512-BF16 / AMX: bf16 training, fp32 inference
    (None, False, "cpu", None, None, False),       # any other CPU: fp32
])
def test_policy_by_hardware(cuda, monkeypatch, capability, cpu_bf16, device, train_dtype, infer_dtype, scaler):
    cuda(capability)
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: cpu_bf16)
    chosen = dev.resolve_device("auto")
    precision = dev.choose_precision(chosen)
    assert (str(chosen), precision.train, precision.infer, precision.scaler) == (device, train_dtype, infer_dtype,
                                                                               scaler)
    line = dev.describe(chosen, precision)
    assert line.startswith(f"[device] {device}") and ("GradScaler" in line) == scaler


def test_mps_is_fp32_even_with_amp(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    precision = dev.choose_precision(dev.resolve_device("mps"), amp=True)
    assert (precision.train, precision.infer, precision.scaler) == (None, None, False)


def test_amp_flags_override_one_phase(cuda, monkeypatch):
    cuda((7, 5))
    t4 = torch.device("cuda:0")
    assert dev.choose_precision(t4, amp=False).train is None and not dev.choose_precision(t4, amp=False).scaler
    assert dev.choose_precision(t4, amp=False).infer == FP16                       # --no-amp in train.py: training only
    assert dev.choose_precision(t4, amp=False, phase="infer").infer is None
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    cpu = torch.device("cpu")
    assert dev.choose_precision(cpu, amp=True).train == BF16                       # forced: emulated bf16
    assert dev.choose_precision(cpu, amp=True, phase="infer").infer == BF16


def test_asked_for_device_that_is_not_there(cuda, monkeypatch):
    cuda(None)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert dev.resolve_device("auto") == torch.device("cpu")
    for name in ("cuda:1", "cuda", "0", "gpu", "mps"):
        with pytest.raises(dev.DeviceError, match="this machine has only: cpu"):
            dev.resolve_device(name)
    with pytest.raises(dev.DeviceError, match="not a device name; this machine has: cpu"):
        dev.resolve_device("tpu")


def test_device_strings_students_type(cuda, monkeypatch):
    """``0`` and ``gpu`` mean the first CUDA GPU, ``1`` the second; a GPU the machine lacks is named with what
    it has; ``mps:0`` is MPS; the chosen GPU becomes the current device (so synchronise times it)."""
    cuda((7, 5), count=2)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert [str(dev.resolve_device(n)) for n in ("0", "1", "gpu", "cuda", "CUDA:1", "mps:0")] == [
        "cuda:0", "cuda:1", "cuda:0", "cuda:0", "cuda:1", "mps"]
    assert [str(d) for d in current] == ["cuda:0", "cuda:1", "cuda:0", "cuda:0", "cuda:1"]
    with pytest.raises(dev.DeviceError, match="cpu, cuda:0, cuda:1, mps"):
        dev.resolve_device("cuda:2")


def test_train_defaults_to_auto_and_says_so_in_help(capsys):
    assert parse_train_args([]).device == "auto"
    with pytest.raises(SystemExit):
        parse_train_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--device DEVICE auto: the first CUDA GPU" in help_text and "(default: auto)" in help_text


def test_autocast_none_is_fp32():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with dev.autocast(torch.device("cpu"), None):
        assert conv(x).dtype == torch.float32
    with dev.autocast(torch.device("cpu"), BF16):
        assert conv(x).dtype == BF16


def test_train_prints_the_device_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "resolve_data_root", lambda data: (_ for _ in ()).throw(SystemExit("stop")))
    with pytest.raises(SystemExit, match="stop"):
        train.main(["--device", "cpu"])
    assert capsys.readouterr().out.splitlines()[0].startswith("[device] cpu: training ")


def test_loader_workers_only_where_they_are_cheap(monkeypatch):
    monkeypatch.setattr(dev.multiprocessing, "get_start_method", lambda allow_none=False: "fork")
    assert dev.default_workers(torch.device("cpu")) == 0 and dev.default_workers(torch.device("mps")) == 0
    monkeypatch.setattr(dev.os, "cpu_count", lambda: 16)  # a GPU box: 8 workers feed an H200 at 416 px
    assert dev.default_workers(torch.device("cuda:0")) == 8
    monkeypatch.setattr(dev.os, "cpu_count", lambda: 2)   # a free Colab T4: as many workers as cores
    assert dev.default_workers(torch.device("cuda:0")) == 2
    monkeypatch.setattr(dev.multiprocessing, "get_start_method", lambda allow_none=False: "spawn")  # macOS, Windows
    assert dev.default_workers(torch.device("cuda:0")) == 0, "spawned workers each receive a copy of the image cache"


def test_batches_copy_asynchronously_only_from_pinned_memory(monkeypatch):
    """non_blocking=True from unpinned memory (MPS, CPU) may copy a tensor after it was freed: only CUDA's pinned
    loader memory may be copied asynchronously."""
    seen, real = [], torch.Tensor.to

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("non_blocking", False))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    targets = [{"boxes": torch.tensor([[0.0, 0, 4, 4]]), "labels": torch.tensor([1])}]
    train.batch_to(torch.device("cpu"), torch.zeros(1, 3, 8, 8), targets, 0.0)
    assert seen and not any(seen), "a batch for a device without pinned memory was copied with non_blocking=True"



def test_a_half_precision_that_breaks_the_outputs_is_refused():
    """One batch in fp32 and under autocast: finite and close -> None; NaN or far boxes -> the reason."""
    from detector import DetectorOutput

    class Model(torch.nn.Module):
        def __init__(self, broken):
            super().__init__()
            self.conv, self.broken = torch.nn.Conv2d(3, 4, 1), broken

        def forward(self, x):
            y = self.conv(x).flatten(1)[:, :8].reshape(len(x), 2, 4)
            if self.broken and torch.is_autocast_cpu_enabled():
                y = y * float("nan") if self.broken == "nan" else y + 50
            return DetectorOutput(y, y * 10, None, None, None)

    x = torch.rand(2, 3, 4, 4)
    assert dev.autocast_problem(Model(None), x, BF16) is None
    assert dev.autocast_problem(Model("nan"), x, FP16) == "a fp16 forward pass gave non-finite outputs on this device"
    assert re.fullmatch(r"a bf16 forward pass moved the boxes by (499|500|501) px on average against fp32",
                        dev.autocast_problem(Model("far"), x, BF16))
