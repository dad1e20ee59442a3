"""benchmark.py: columns whose ratio is printed are timed in alternation, so drift falls on both alike."""
import pytest

from tools import benchmark


class DriftingClock:
    """A fake ``time.perf_counter``: every call of a timed function costs its base time times a factor that
    drifts with the number of calls so far (a machine warming up, or another process starting)."""

    def __init__(self, drift: float):
        self.now, self.calls, self.drift, self.order = 0.0, 0, drift, []

    def __call__(self) -> float:
        return self.now

    def work(self, name: str, base: float):
        def fn():
            self.order.append(name)
            self.now += base * (1 + self.drift * self.calls)
            self.calls += 1
        return fn


def ratio(monkeypatch, drift: float, together: bool) -> float:
    clock = DriftingClock(drift)
    monkeypatch.setattr(benchmark.time, "perf_counter", clock)
    floor, step = clock.work("floor", 1.0), clock.work("step", 1.2)  # the step truly costs 1.2x its floor
    if together:
        t = benchmark.timed_together({"floor": floor, "step": step}, repeats=5, warmup=2)
    else:
        t = {"floor": benchmark.timed(floor, 5, 2), "step": benchmark.timed(step, 5, 2)}
    if together:
        assert clock.order[:6] == ["floor", "step"] * 3
    return t["step"] / t["floor"]


def test_alternation_keeps_the_ratio_under_drift(monkeypatch):
    for drift in (-0.03, 0.0, 0.03):  # speeding up (warm-up), steady, slowing down
        assert abs(ratio(monkeypatch, drift, together=True) - 1.2) < 0.06


def test_one_after_the_other_a_speed_up_puts_the_floor_above_the_step(monkeypatch):
    # What the alternation fixes: timed first, the floor took the slow start alone (step/floor < 1).
    assert ratio(monkeypatch, -0.03, together=False) < 1.0


def test_benchmark_runs_end_to_end(tiny_dataset, capsys):
    rows = benchmark.main(["--data", str(tiny_dataset), "--sizes", "64", "--batch-size", "2", "--repeats", "1",
                           "--warmup", "0", "--loop-steps", "1"])
    keys = {"backbone_fb", "train_step", "loader", "loop", "backbone_fwd_b1", "infer_b1", "fused_b1", "infer_b8"}
    assert rows[0]["size"] == 64 and all(rows[0][k] > 0 for k in keys)
    out = capsys.readouterr().out
    assert "step/floor" in out and "loop/step" in out
    loop_over_step = float(out.strip().splitlines()[-1].split()[7])  # the loop/step column of the 64 px row
    assert loop_over_step == pytest.approx(rows[0]["train_step"] / rows[0]["loop"], abs=0.01)
