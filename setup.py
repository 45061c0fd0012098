"""Packaging for DFS, a distributed file system on Twisted."""

import re
from pathlib import Path

from setuptools import setup
from setuptools.command.editable_wheel import editable_wheel

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "dfs" / "__init__.py").read_text(), re.M
).group(1)


class _PluginPath:
    """Wraps an editable strategy so the checkout's twisted/plugins is found.

    twistd finds dropins in every ``twisted/plugins`` folder on sys.path. The finder
    that setuptools uses for ``pip install -e .`` maps packages without putting the
    checkout on sys.path, so it also writes a .pth naming the checkout.
    """

    def __init__(self, inner, name):
        self._inner = inner
        self._name = name

    def __enter__(self):
        self._inner.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self._inner.__exit__(*exc_info)

    def __call__(self, wheel, files, mapping):
        self._inner(wheel, files, mapping)
        wheel.writestr(f"__editable__.{self._name}.plugins.pth", f"{HERE.resolve()}\n")


class EditableWithPlugins(editable_wheel):
    def _select_strategy(self, name, tag, build_lib):
        return _PluginPath(super()._select_strategy(name, tag, build_lib), name)


setup(
    name="dfs",
    version=VERSION,
    description="A distributed file system on Twisted: replicated chunks, Raft, mutual TLS",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    # SPDX expression (PEP 639); LICENSE is the unmodified Apache License 2.0 text.
    license_expression="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.11",
    packages=[
        "dfs",
        "dfs.config",
        "dfs.protocol",
        "dfs.security",
        "dfs.metaserver",
        "dfs.dataserver",
        "dfs.client",
        "dfs_shell",
        "twisted.plugins",
    ],
    # The shell lives in the top-level folder shell/ but is installed as dfs_shell,
    # so that no generic top-level module named "shell" lands in site-packages.
    package_dir={"dfs_shell": "shell"},
    package_data={"twisted.plugins": ["dfs_plugins.py"]},
    include_package_data=True,
    install_requires=[
        "twisted[tls]>=24.3.0",
        "service-identity>=24.1.0",
        "pyopenssl>=24.0.0",
        "cryptography>=42.0.0",
        "attrs>=23.2.0",
        "prompt-toolkit>=3.0.43",
        # DurableSyncObj builds on private parts of 0.3.17 (journal with term and vote,
        # __loadDumpFile, __onMessageReceived), listed and checked at start in
        # dfs/metaserver/syncobj.py: check the Raft tests before raising the cap.
        "pysyncobj>=0.3.17,<0.4",
        "treq>=23.11.0",
        "prometheus-client>=0.20.0",
        "google-crc32c>=1.5.0",
        "crochet>=2.1.1",
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-twisted>=1.14.1",
            "hypothesis>=6.100",
            "pexpect>=4.9",
            # Ships the Kubernetes schemas: tests/packaging validates the manifests offline.
            "kubernetes-validate>=1.30",
        ],
        "lint": [
            "ruff>=0.5",
            "mypy>=1.10",
            "mypy-zope>=1.0.5",
        ],
    },
    cmdclass={"editable_wheel": EditableWithPlugins},
    entry_points={
        "console_scripts": [
            "dfs = dfs_shell.main:main",
            "dfs-meta-restore = dfs.metaserver.restore:main",
        ]
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Filesystems",
    ],
)
