"""Benchmark: one analytical LoRA count (lessonlib.params) next to counting with peft on a meta model.

For every registry model: the median time of `count_parameters(name, 8, "all-linear")` (after
the first call, which imports transformers' config classes), and the time to build the model on
the meta device and let peft count the same adapter. Both counts are printed and compared.
Run: .venv/bin/python benchmarks/params_speed.py
"""

from __future__ import annotations

import statistics
import time

from lessonlib.env import quiet_library_logs

quiet_library_logs()
import peft  # noqa: E402

from lessonlib.params import build_on_meta, count_parameters, registry_names  # noqa: E402


def median_ms(function, repeats: int = 20) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    count_parameters("smollm2-135m")  # warm-up: imports the config classes once
    print(f"{'model':<14} {'trainable':>13} {'analytical':>11} {'meta + peft':>12}  equal")
    for name in registry_names():
        ours = count_parameters(name, 8, "all-linear")
        fast = median_ms(lambda: count_parameters(name, 8, "all-linear"))
        start = time.perf_counter()
        model = build_on_meta(name)
        config = peft.LoraConfig(r=8, target_modules="all-linear", fan_in_fan_out=name == "gpt2")
        trainable, total = peft.get_peft_model(model, config, low_cpu_mem_usage=True).get_nb_trainable_parameters()
        slow = 1000 * (time.perf_counter() - start)
        equal = (trainable, total) == (ours.trainable, ours.total)
        print(f"{name:<14} {ours.trainable:>13,} {fast:>8.2f} ms {slow:>9.0f} ms  {equal}")


if __name__ == "__main__":
    main()
