"""``paceline.__all__`` lists exactly the public API, in ruff's order (after httpx's test)."""

from __future__ import annotations

import inspect

import paceline


def isort_style(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order: CONSTANT_CASE first, then CamelCase, then the rest."""
    if name.isupper():
        return 0, name
    if name[:1].isupper():
        return 1, name
    return 2, name


def test_all_is_sorted_without_repeats() -> None:
    assert paceline.__all__ == sorted(paceline.__all__, key=isort_style)
    assert len(set(paceline.__all__)) == len(paceline.__all__)


def test_all_lists_every_public_class_and_function_of_the_package() -> None:
    for name in dir(paceline):  # public names load on first use: load them all
        getattr(paceline, name)
    public = {
        name
        for name, value in vars(paceline).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__.startswith("paceline")
    }
    assert set(paceline.__all__) == public


def test_every_name_in_all_resolves() -> None:
    namespace: dict[str, object] = {}
    exec("from paceline import *", namespace)
    for name in paceline.__all__:
        assert namespace[name] is getattr(paceline, name)


def test_importing_the_package_loads_nothing_heavy() -> None:
    # `import paceline` stays cheap (the CLI's signal handlers go in before the rest).
    import subprocess
    import sys

    code = (
        "import sys, paceline; "
        "print(sorted(m for m in ('httpx', 'rich', 'click') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
