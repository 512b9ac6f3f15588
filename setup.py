"""Package layout: the repository keeps services/, libs/ and deploy/ at top level; installed,
they live inside the ``flotilla`` package so no generic top-level name is taken in site-packages."""

from setuptools import find_packages, setup

MAPPED = {"flotilla": "flotilla", "flotilla.libs": "libs", "flotilla.services": "services",
          "flotilla.deploy": "deploy"}

packages = []
for name, folder in MAPPED.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=MAPPED, package_data={"flotilla.deploy": ["*.in"]})
