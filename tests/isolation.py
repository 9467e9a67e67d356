"""What the SavedModel subprocess tests share: a preamble for a fresh interpreter that makes
importing tfp_vae or tensorflow_probability fail, so the test proves the SavedModel needs
neither."""

BLOCK_PACKAGE_IMPORTS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tfp_vae", "tensorflow_probability"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
"""
