"""The build step that setup.cfg cannot express: the repository's savedmodels/ (index.json, each
SavedModel folder, each NAME.keras), which the project keeps at the top level, goes into the
built package as tfp_vae/savedmodels/, where tfp_vae.pretrained finds it once installed.

Everything else is in setup.cfg. An editable install (pip install -e .) copies nothing: there
tfp_vae.pretrained reads the checkout's savedmodels/ itself.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

SAVEDMODELS = "savedmodels"


class BuildPyWithSavedModels(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        if not os.path.isfile(os.path.join(SAVEDMODELS, "index.json")):
            raise SystemExit(f"{SAVEDMODELS}/index.json is missing: build from a full checkout.")
        self.copy_tree(SAVEDMODELS, os.path.join(self.build_lib, "tfp_vae", SAVEDMODELS))


setup(cmdclass={"build_py": BuildPyWithSavedModels})
