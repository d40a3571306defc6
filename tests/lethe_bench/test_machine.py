"""The machine phrase every benchmark figure carries names the CPU model."""

import os
import platform

from lethe_bench import machine


def test_the_cpu_model_comes_from_cpuinfo_and_the_phrase_names_it(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    monkeypatch.setattr(machine, "CPUINFO", cpuinfo)
    assert machine.cpu_model() == "AMD EPYC 9654 96-Core Processor"
    assert machine.describe() == (f"{platform.machine()} (AMD EPYC 9654 96-Core Processor), "
                                  f"{os.cpu_count()} CPU cores")
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "absent")
    monkeypatch.setattr(machine.platform, "processor", lambda: "")
    assert machine.cpu_model() == "unknown CPU"
