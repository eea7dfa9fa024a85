"""The shipped deploy/ files as package data: a wheel installed anywhere finds its default
funnels, the local broker's Maven project, the dashboards and the alert rules
(``streamer.resources.deploy_dir``). Everything else is in pyproject.toml."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# deploy/ entries a wheel carries (the Dockerfile and the ops-tools installer stay behind).
SHIPPED = ("funnels", "kafka", "grafana", "prometheus", "alertmanager")


class BuildWithDeployFiles(build_py):
    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / "deploy"
        if self.editable_mode or not source.is_dir():
            return  # an editable install reads the checkout's deploy/ itself
        target = Path(self.build_lib) / "streamer" / "_deploy"
        for name in SHIPPED:
            shutil.copytree(source / name, target / name, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithDeployFiles})
