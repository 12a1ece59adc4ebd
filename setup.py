"""Maps the repository's top-level folders into one import namespace, `selfreward_vlm`.

The repository keeps one folder per part (`service/`, `client/`, `trainer/`, ...), but a wheel
must not install `service` or `client` as top-level modules: any other distribution with the
same generic name would shadow them. So each folder becomes a subpackage of `selfreward_vlm`
(`client/` -> `selfreward_vlm.client`), through setuptools' `package_dir`, which editable
installs honour too. Everything else is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

ROOT = "selfreward_vlm"
ROOT_DIR = "selfreward"  # the CLI and the demo
SUBPACKAGES = ["core", "client", "service", "trainer", "tiny", "world"]

package_dir = {ROOT: ROOT_DIR}
packages = [ROOT]
for folder in SUBPACKAGES:
    package_dir[f"{ROOT}.{folder}"] = folder
    packages.append(f"{ROOT}.{folder}")
    # Namespace discovery also lists data-only folders (e.g. service/ui/static), which
    # setuptools wants named as packages for their package_data.
    subs = find_namespace_packages(folder, exclude=["*__pycache__*"])
    packages += [f"{ROOT}.{folder}.{sub}" for sub in subs]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={ROOT: ["py.typed"], f"{ROOT}.service": ["ui/static/*"]},
)
